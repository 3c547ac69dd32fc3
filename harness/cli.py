"""The `harness` command: parses arguments and dispatches; the work happens in the modules it calls.

Each command imports its stage inside its function: the stages import TensorFlow/Keras, MLflow,
pandas or matplotlib, and `harness --help`, `harness ui` or a mistyped argument must answer
without waiting for libraries they do not use.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from pathlib import Path

from harness import GOODFELLOW_2014, REPORT_CONV_ONLY, __version__, interrupt
from harness.errors import HarnessError
from harness.evaluation.intervals import wilson

BENCHMARKS = {"Goodfellow et al. 2014": GOODFELLOW_2014, "report (conv-only)": REPORT_CONV_ONLY}


def experiments_dir() -> Path:
    """experiments/ of the working directory, else of the checkout the package was installed from."""
    for candidate in (Path.cwd() / "experiments", Path(__file__).resolve().parents[1] / "experiments"):
        if candidate.is_dir():
            return candidate
    raise HarnessError("no experiments/ folder here or beside the installed package; run from the checkout")


def _resolve_spec(name: str) -> Path:
    path = Path(name)
    if path.exists():
        return path
    candidate = experiments_dir() / (name if name.endswith(".yaml") else f"{name}.yaml")
    if candidate.exists():
        return candidate
    raise HarnessError(f"{name}: no such spec file (nor experiments/{candidate.name})")


def _command_line() -> str:
    return "harness " + " ".join(shlex.quote(a) for a in sys.argv[1:])


def _print_metrics(metrics: dict, title: str, svhn_test: bool = False) -> None:
    """The figures of one evaluation; the published results beside them only when the images are
    SVHN's test set (``svhn_test``): on other data they are not comparable."""
    print(f"\n{title}")
    n = int(metrics["examples"])
    low, high = wilson(round(metrics["sequence_accuracy"] * n), n)
    print(f"  sequence (global) accuracy : {100 * metrics['sequence_accuracy']:6.2f}%  "
          f"(95% interval {100 * low:.1f}-{100 * high:.1f}%, {n:,} numbers)")
    print(f"  length accuracy            : {100 * metrics['length_accuracy']:6.2f}%")
    for p in range(1, 6):
        value = metrics.get(f"digit{p}_accuracy")
        if value == value and value is not None:  # skip NaN: no example has this position
            print(f"  digit {p} accuracy           : {100 * value:6.2f}%  ({metrics[f'digit{p}_examples']} examples)")
    print(f"  coverage at 98% accuracy   : {100 * metrics['coverage_at_98']:6.2f}%")
    for name, value in BENCHMARKS.items() if svhn_test else ():
        print(f"  vs {name:<23}: {100 * (metrics['sequence_accuracy'] - value):+6.2f} pp (their {100 * value:.2f}%)")


def cmd_train(args) -> int:
    # The report goes to runs/reports/<name>/ (ignored by git): a clone stays clean, and a committed
    # example under reports/ changes only when asked for (`harness report --runs RUN_ID --out reports/NAME`).
    from harness.spec import load_spec

    spec = load_spec(_resolve_spec(args.spec), args.set)  # a bad spec is answered before the heavy imports
    from harness.reporting.report import report_dir, write_run_report
    from harness.training.core import train

    result = train(spec, command=_command_line())
    _print_metrics(result.test, f"{spec.name}: held-out results (MLflow run {result.run_id})",
                   svhn_test=spec.data.name == "svhn")
    report = write_run_report(result.run_id, report_dir(spec.name), _command_line())
    print(f"\nReport: {report}")
    print("MLflow UI: harness ui")
    return 0


def cmd_sweep(args) -> int:
    import os

    if args.workers is not None and args.role is not None:
        raise HarnessError("--workers starts its own chief and workers on this machine; leave out --role")
    if (args.role is None) != (args.oracle is None):
        raise HarnessError("--role and --oracle HOST:PORT go together (--role chief|worker --oracle HOST:PORT)")
    if args.tuner_id is not None and args.role != "worker":
        raise HarnessError("--tuner-id names a worker; give it with --role worker")
    if args.role == "chief":
        os.environ["CUDA_VISIBLE_DEVICES"] = ""  # the chief only serves the oracle: leave the GPUs to workers
    from harness.sweeps.spec import load_sweep

    spec_path = _resolve_spec(args.spec)
    spec = load_sweep(spec_path, args.set)  # a bad sweep file is answered before the heavy imports
    if args.workers is not None:
        from harness.sweeps.launch import launch

        return launch(spec_path, args.set, args.workers)
    from harness.sweeps.search import run_sweep

    run_sweep(spec, role=args.role or "local", oracle=args.oracle, tuner_id=args.tuner_id,
              command=_command_line())
    return 0


def cmd_quickstart(args) -> int:
    args.spec = str(experiments_dir() / "quickstart.yaml")
    return cmd_train(args)


def cmd_evaluate(args) -> int:
    from harness.evaluation.evaluate import evaluate_target

    metrics, what = evaluate_target(args.target, split=args.split, data=args.data, crops=args.crops,
                                    command=_command_line())
    _print_metrics(metrics, f"Evaluation of {what}")
    return 0


def cmd_predict(args) -> int:
    from harness.evaluation import predict

    def echo(p):
        print(f"{p.path}  {p.number or '-'}  {p.confidence:.4f}", flush=True)

    result = predict.predict(args.model, args.images, box=args.box, csv_path=args.csv,
                             box_expand=args.box_expand, batch_size=args.batch_size, echo=echo)
    if result.csv:
        print(f"{len(result.predictions)} predictions written to {result.csv}", file=sys.stderr)
    if result.uncropped:
        first = result.uncropped[0]
        print(f"harness: warning: {len(result.uncropped)} image(s) read whole are much larger than a number crop "
              f"(e.g. {first.path}, {first.size[0]}x{first.size[1]}); the model reads a cropped number: give its "
              f"box with --box LEFT,TOP,WIDTH,HEIGHT", file=sys.stderr)
    if result.skipped:
        print(f"skipped {len(result.skipped)} unreadable image(s):", file=sys.stderr)
        for s in result.skipped:
            print(f"  {s.path}: {s.problem}", file=sys.stderr)
    return 0


def _box(text: str):
    from harness.evaluation.predict import parse_box

    try:
        return parse_box(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def cmd_report(args) -> int:
    if args.results:
        from harness.reporting.results import write_results

        print(f"Results: {write_results(args.results)} (from reports/*/report.json)")
        return 0
    if args.rebuild:
        from harness.reporting.rebuild import rebuild_report
        from harness.reporting.report import write_index

        for folder in args.rebuild:
            print(f"Report: {rebuild_report(folder)}")
        for parent in sorted({Path(f).parent for f in args.rebuild}):
            if (index := write_index(parent)) is not None:
                print(f"Index of reports: {index}")
        return 0
    # A report reads MLflow and draws figures; no model runs. Keras' numpy backend spares loading
    # TensorFlow, most of this command's start-up on a CPU.
    if "keras" not in sys.modules:
        os.environ.setdefault("KERAS_BACKEND", "numpy")
    from harness.reporting.report import INDEX_MARK, generate_report

    path = generate_report(experiment=args.experiment, sweep=args.sweep, runs=args.runs, out=args.out,
                           fmt=args.format)
    print(f"Report: {path}")
    index = path.parent.parent / "README.md"
    if index.exists() and INDEX_MARK in index.read_text(errors="replace"):
        print(f"Index of reports: {index}")
    return 0


def cmd_list(args) -> int:
    if args.what == "experiments":
        found = sorted(experiments_dir().glob(args.pattern if args.pattern.endswith(".yaml") else f"{args.pattern}.yaml"))
        for path in found:
            expect = next((ln.split(":", 1)[1].strip() for ln in path.read_text().splitlines()
                           if ln.startswith("# Expect:")), "")
            print(f"{path.stem:<28} {expect}")
        if not found:
            print(f"harness: no experiments match '{args.pattern}' in {experiments_dir()}; there are: "
                  f"{', '.join(p.stem for p in sorted(experiments_dir().glob('*.yaml')))}", file=sys.stderr)
            return 1
        return 0
    from harness.data import sources
    from harness.models import architectures as models
    from harness.models import augment

    registry = {"models": models.MODELS, "policies": augment.POLICIES, "datasets": sources.DATASETS}[args.what]
    names = registry.list(args.pattern)
    for name in names:
        print(f"{name:<28} {registry.describe(name)}")
    if not names:  # like grep: nothing found is an answer, and a non-zero exit
        print(f"harness: no {args.what} match '{args.pattern}'; there are: {', '.join(registry.list())}",
              file=sys.stderr)
        return 1
    return 0


def cmd_register(args) -> int:
    from harness.spec import check_model_alias, check_model_name

    check_model_name(args.name)
    check_model_alias(args.alias or "")
    # MLflow only once the name is known to be good
    from harness.tracking import model_registry

    print(model_registry.register(args.run_id, args.name, args.alias or ""))
    return 0


def cmd_ui(args) -> int:
    from harness.tracking import server

    server.check_address(args.host, args.port)
    server.check_store(server.tracking_uri(), create=False)
    print(f"MLflow UI for {server.shown_uri(server.tracking_uri())} at http://{args.host}:{args.port} "
          "(Ctrl-C stops it)", flush=True)
    return server.serve(server.ui_command(args.host, args.port))


def cmd_server(args) -> int:
    from harness.tracking import server

    plan = server.server_plan(args.backend_store_uri, args.artifacts_destination, args.host, args.port)
    server.check_address(args.host, args.port)
    server.check_store(plan.backend, create=True)
    print(f"MLflow tracking server: store {plan.store}, artifacts {plan.artifacts}, at {plan.uri} "
          "(Ctrl-C stops it)")
    print(f"Teammates log to it (and see it in a browser at the same address) after:\n"
          f"  export MLFLOW_TRACKING_URI={plan.uri}")
    if args.host in ("127.0.0.1", "localhost", "::1"):
        print("It listens on this machine only; --host 0.0.0.0 makes it reachable from the network.")
    sys.stdout.flush()
    return server.serve(plan.command)


def cmd_data_fetch(args) -> int:
    from harness.data.fetch import fetch_svhn

    folders = fetch_svhn(args.root, args.splits, source=args.source, mirror=args.mirror,
                         md5=dict(args.md5))
    for split, folder in folders.items():
        print(f"svhn/{split}: {folder}")
    return 0


def _splits(text: str) -> list[str]:
    from harness.data.fetch import SPLITS

    splits = [s.strip() for s in text.split(",") if s.strip()]
    unknown = [s for s in splits if s not in SPLITS]
    if not splits or unknown:
        raise argparse.ArgumentTypeError(f"{text!r}: give a comma-separated list of {', '.join(SPLITS)}")
    return splits


def _md5(text: str) -> tuple[str, str]:
    from harness.data.fetch import SPLITS

    split, _, digest = text.partition("=")
    if split not in SPLITS or len(digest) != 32 or any(c not in "0123456789abcdefABCDEF" for c in digest):
        raise argparse.ArgumentTypeError(f"{text!r}: expected SPLIT=MD5 (32 hex digits)")
    return split, digest.lower()


def _add_data_fetch(data) -> None:
    p = data.add_parser("fetch", help="download, verify and extract a raw dataset (or register a copy)",
                        description="Download the SVHN Format 1 archives into ROOT/svhn/downloads/ (resuming "
                                    "an interrupted download), verify size and MD5, and extract them safely "
                                    "into ROOT/svhn/<split>/. With --from, verify and extract an archive you "
                                    "have, or register an extracted folder in place (nothing is copied).")
    p.add_argument("dataset", choices=["svhn"])
    p.add_argument("--splits", type=_splits, metavar="LIST",
                   help="comma-separated splits: train, test, extra (default: train,test; with --from: "
                        "the one its name says)")
    p.add_argument("--from", dest="source", metavar="PATH",
                   help="an archive (e.g. train.tar.gz) or an extracted split folder (with digitStruct.mat, "
                        "a .json or labels.csv) you already have")
    p.add_argument("--root", default="data", help="data folder (default: data)")
    p.add_argument("--mirror", metavar="URL", help="base URL serving {train,test,extra}.tar.gz "
                                                   "(default: the official site)")
    p.add_argument("--md5", type=_md5, action="append", default=[], metavar="SPLIT=HEX",
                   help="expected MD5 of a split's archive when it differs from the published one "
                        "(repeatable)")
    p.set_defaults(func=cmd_data_fetch)


def cmd_data_prepare(args) -> int:
    from harness.data import datasets
    from harness.data.splitfile import PreparedSplit
    from harness.spec import load_spec

    chosen = [f"data.name={args.dataset}"] if args.dataset else []
    chosen += [f"data.root={args.root}"] if args.root else []
    spec = load_spec(_resolve_spec(args.spec) if args.spec else None, chosen + args.set)
    data = datasets.prepare(spec.data, workers=args.workers)
    for split, path in data.splits().items():
        prepared = PreparedSplit(path)
        print(f"{split:<13} {prepared.count:>9,} images {prepared.image_size}x{prepared.image_size}  {path}")
    print(f"data card     {data.card.with_name('card.md')} (all of it in {data.card.name})")
    return 0


def _add_data_prepare(data) -> None:
    p = data.add_parser("prepare", help="prepare a dataset's split files and data card (resumable)",
                        description="Prepare the split files (HDF5) of a dataset as a spec's data section says, "
                                    "and write its data card (card.md, card.json) beside them. Interrupted, the "
                                    "same command resumes; finished files are reused.")
    p.add_argument("dataset", nargs="?", help="a registered dataset (default: the spec's)")
    p.add_argument("--spec", metavar="SPEC", help="a spec file or experiment name to take the data section "
                                                  "from (default: the defaults)")
    p.add_argument("--root", help="data folder (default: the spec's data.root, data)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a spec value, e.g. --set data.preprocessing=report (repeatable)")
    p.add_argument("--workers", type=int, metavar="N", help="decoding processes (default: all cores)")
    p.set_defaults(func=cmd_data_prepare)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="harness",
        description="Benchmark harness for multi-digit street-number recognition (Goodfellow et al. 2014).",
    )
    parser.add_argument("--version", action="version", version=f"harness {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def overrides(p):
        p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="override a spec value, e.g. --set train.epochs=3 (repeatable; type-checked)")

    p = sub.add_parser("quickstart", help="generate the embedded dataset, train, evaluate, report (offline)",
                       description="Generate (or reuse) the embedded synthetic dataset, prepare it, train the "
                                   "quickstart model, evaluate it on the held-out split, log everything to MLflow "
                                   "and write runs/reports/quickstart/README.md.")
    overrides(p)
    p.set_defaults(func=cmd_quickstart)

    p = sub.add_parser("train", help="train and evaluate one experiment spec",
                       description="Train the experiment in SPEC (a YAML file, or a name in experiments/), "
                                   "evaluate it on the held-out split, log to MLflow and write runs/reports/<name>/.")
    p.add_argument("spec", metavar="SPEC", help="spec file or experiment name")
    overrides(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("sweep", help="hyperparameter sweep of a sweep spec (KerasTuner), one MLflow parent run",
                       description="Run the sweep in SPEC (a spec with a `sweep:` section): KerasTuner's random, "
                                   "bayesian or hyperband search over the declared space, one nested MLflow run "
                                   "per trial under one parent run, a leaderboard at the end. Running the same "
                                   "command again continues an interrupted sweep.")
    p.add_argument("spec", metavar="SPEC", help="sweep file or experiment name")
    overrides(p)
    p.add_argument("--workers", type=int, metavar="N",
                   help="start a chief and N worker processes on this machine (one GPU each when there are GPUs)")
    p.add_argument("--role", choices=["chief", "worker"],
                   help="join a multi-host sweep: the chief serves the oracle, workers run trials")
    p.add_argument("--oracle", metavar="HOST:PORT",
                   help="with --role: the address the chief listens on (e.g. 0.0.0.0:8000) or workers reach")
    p.add_argument("--tuner-id", metavar="ID",
                   help="a worker's id, unique in the sweep (default tuner-<host>[-gpu<N>]); a restarted "
                        "worker with the same id takes back its unfinished trial")
    p.set_defaults(func=cmd_sweep)

    p = sub.add_parser("evaluate", help="evaluate a run's model (or a .keras file) on a split",
                       description="Evaluate the model of an MLflow run (run id or models:/NAME@ALIAS) on a "
                                   "split of its spec's data or on any labelled folder (--data FOLDER), or a "
                                   ".keras model file on a prepared split file given with --data.")
    p.add_argument("target", metavar="MODEL", nargs="+",
                   help="MLflow run id, registered model (models:/NAME@ALIAS) or .keras file; several: one "
                        "ensemble, each head's log-probabilities averaged over them")
    p.add_argument("--split", default="test", choices=["train", "val", "test", "test_resized"],
                   help="split (default: test; test_resized: the report's resized-only test set)")
    p.add_argument("--data", metavar="FOLDER_OR_PREPARED.h5",
                   help="evaluate on this instead: a folder of labelled images (digitStruct.mat, a .json or "
                        "labels.csv), prepared as the model's spec prepares test images and logged as an "
                        "MLflow run of its own; or a prepared split file")
    p.add_argument("--crops", type=int, default=1, choices=[1, 5],
                   help="1: the centre crop, as training evaluates (default); 5: it and four more, a quarter "
                        "of the margin in from each corner, the heads' log-probabilities averaged")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("predict", help="read the numbers in image files with a run's model (or a .keras file)",
                       description="Read the number in each image (files, or every image in a folder) with the "
                                   "model of an MLflow run or a .keras file. Images are preprocessed exactly like "
                                   "the training data. Prints 'path  number  confidence' per image ('-' when no "
                                   "digit is read); a folder's predictions also go to a CSV file.")
    p.add_argument("model", metavar="MODEL", help="MLflow run id, or a .keras model file")
    p.add_argument("images", metavar="IMAGE", nargs="+", help="image files or folders of images")
    p.add_argument("--box", type=_box, metavar="LEFT,TOP,WIDTH,HEIGHT",
                   help="the number's box in pixels (e.g. the union of its digit boxes; one image only); "
                        "default: the whole image")
    p.add_argument("--csv", metavar="OUT.csv",
                   help="write path,number,confidence rows here (default for folders: predictions.csv)")
    p.add_argument("--box-expand", type=float, metavar="F",
                   help="grow the box by this fraction, as preparation did (default: the run's, else 0.3)")
    p.add_argument("--batch-size", type=int, default=256, help="images per model call (default: 256)")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("report", help="write a report of runs, an experiment or a sweep from MLflow",
                       description="Write runs/reports/<name>/README.md (or a self-contained index.html) with figures, "
                                   "from what MLflow holds: held-out accuracy against Goodfellow et al. 2014 "
                                   "(96.03%) and the report's conv-only variant (92.4%), learning curves, "
                                   "per-position accuracy, digit confusion, coverage, the worst errors and "
                                   "how to reproduce each run. Logs the report to the runs it covers (a sweep: "
                                   "its parent) and rewrites the index beside it (runs/reports/README.md). With "
                                   "--results FILE, write the results page (docs/results.md) from the committed "
                                   "reports' reports/*/report.json instead.")
    target = p.add_mutually_exclusive_group(required=True)
    target.add_argument("--experiment", metavar="NAME", help="every run of an MLflow experiment")
    target.add_argument("--sweep", metavar="PARENT_RUN_ID", help="the trials (nested runs) of a sweep")
    target.add_argument("--runs", nargs="+", metavar="RUN_ID", help="these runs")
    target.add_argument("--rebuild", nargs="+", metavar="DIR",
                        help="rebuild reports whose MLflow runs are not at hand from what their folders hold "
                             "(report.json and tables), with the current rules; then their index")
    target.add_argument("--results", metavar="FILE",
                        help="the results page (e.g. docs/results.md), generated from reports/*/report.json")
    p.add_argument("--out", metavar="DIR", help="report folder (default: runs/reports/<name from the target>; "
                                               "reports/<name> rewrites a committed example)")
    p.add_argument("--format", choices=["markdown", "html"], default="markdown",
                   help="markdown (README.md, default) or html (one self-contained index.html)")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("register", help="register a run's logged model in the MLflow model registry",
                       description="Register the model an MLflow run logged as a new version of NAME in the "
                                   "MLflow model registry (created when new), optionally pointing ALIAS at it. "
                                   "Prints models:/NAME/VERSION; models:/NAME@ALIAS then names the model in "
                                   "predict, evaluate, train.init_from and MLflow serving.")
    p.add_argument("run_id", metavar="RUN_ID", help="the MLflow run whose logged model to register")
    p.add_argument("--name", required=True, metavar="NAME", help="registered model name, e.g. svhn-reader")
    p.add_argument("--alias", metavar="ALIAS", help="an alias to point at the new version, e.g. champion")
    p.set_defaults(func=cmd_register)

    p = sub.add_parser("list", help="list models, augmentation policies, datasets or experiments",
                       description="List registered names (with a shell-style pattern, e.g. 'cnn*').")
    p.add_argument("what", choices=["models", "policies", "datasets", "experiments"])
    p.add_argument("pattern", nargs="?", default="*")
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("ui", help="open the MLflow UI on the store runs are written to (127.0.0.1)",
                       description="Start the MLflow UI on the same tracking store the harness writes to "
                                   "(MLFLOW_TRACKING_URI, else ./mlflow.db), bound to 127.0.0.1 by default.")
    p.add_argument("--host", default="127.0.0.1", help="interface to bind (default: 127.0.0.1, this machine only)")
    p.add_argument("--port", type=int, default=5000, help="TCP port, 1-65535 (default: 5000)")
    p.set_defaults(func=cmd_ui)

    p = sub.add_parser("server", help="start an MLflow tracking server for a team (127.0.0.1 by default)",
                       description="Start an MLflow tracking server (the REST API teammates log to, and the UI). "
                                   "By default it serves the local store (./mlflow.db, artifacts in ./mlruns), so "
                                   "runs logged before are visible too, and listens on 127.0.0.1 only. Prints the "
                                   "MLFLOW_TRACKING_URI to export.")
    p.add_argument("--backend-store-uri", metavar="URI",
                   help="where runs are recorded (default: sqlite:///mlflow.db here; e.g. postgresql://...)")
    p.add_argument("--artifacts-destination", metavar="DIR",
                   help="where uploaded artifacts are kept (default: ./mlruns; also s3://... etc.)")
    p.add_argument("--host", default="127.0.0.1",
                   help="interface to bind (default: 127.0.0.1, this machine only; 0.0.0.0 for the network)")
    p.add_argument("--port", type=int, default=5000, help="TCP port, 1-65535 (default: 5000)")
    p.set_defaults(func=cmd_server)

    # `harness data ...`: one _add_data_* function per subcommand.
    p = sub.add_parser("data", help="fetch and prepare datasets", description="Fetch and prepare datasets.")
    data = p.add_subparsers(dest="data_command", required=True, metavar="DATA_COMMAND")
    _add_data_fetch(data)
    _add_data_prepare(data)
    return parser


def main(argv: list[str] | None = None) -> int:
    from harness.backend import quiet_environment

    quiet_environment()
    args = build_parser().parse_args(argv)
    try:
        with interrupt.installed():
            return args.func(args)
    except HarnessError as exc:
        print(f"harness: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("harness: interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `harness list ... | head`: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
        return 0
