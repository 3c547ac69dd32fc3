"""The `harness` command: parses arguments and dispatches; the work happens in the modules it calls."""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
from pathlib import Path

from harness.errors import HarnessError

BENCHMARKS = {"Goodfellow et al. 2014": 0.9603, "report (conv-only)": 0.924}


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


def _print_metrics(metrics: dict, title: str) -> None:
    print(f"\n{title}")
    print(f"  sequence (global) accuracy : {100 * metrics['sequence_accuracy']:6.2f}%")
    print(f"  length accuracy            : {100 * metrics['length_accuracy']:6.2f}%")
    for p in range(1, 6):
        value = metrics.get(f"digit{p}_accuracy")
        if value == value and value is not None:  # skip NaN: no example has this position
            print(f"  digit {p} accuracy           : {100 * value:6.2f}%  ({metrics[f'digit{p}_examples']} examples)")
    print(f"  coverage at 98% accuracy   : {100 * metrics['coverage_at_98']:6.2f}%")
    for name, value in BENCHMARKS.items():
        print(f"  vs {name:<23}: {100 * (metrics['sequence_accuracy'] - value):+6.2f} pp (their {100 * value:.2f}%)")


def cmd_train(args) -> int:
    from harness.report import write_run_report
    from harness.spec import load_spec
    from harness.train import train

    spec_path = _resolve_spec(args.spec)
    spec = load_spec(spec_path, args.set)
    result = train(spec, command=_command_line())
    _print_metrics(result.test, f"{spec.name}: held-out results (MLflow run {result.run_id})")
    report = write_run_report(result.run_id, Path("reports") / spec.name, _command_line())
    print(f"\nReport: {report}")
    print("MLflow UI: harness ui")
    return 0


def cmd_quickstart(args) -> int:
    args.spec = str(experiments_dir() / "quickstart.yaml")
    return cmd_train(args)


def cmd_evaluate(args) -> int:
    from harness.evaluate import evaluate_target

    metrics, what = evaluate_target(args.target, split=args.split, data=args.data)
    _print_metrics(metrics, f"Evaluation of {what}")
    return 0


def cmd_list(args) -> int:
    if args.what == "experiments":
        for path in sorted(experiments_dir().glob(args.pattern if args.pattern.endswith(".yaml") else f"{args.pattern}.yaml")):
            expect = next((ln.split(":", 1)[1].strip() for ln in path.read_text().splitlines()
                           if ln.startswith("# Expect:")), "")
            print(f"{path.stem:<28} {expect}")
        return 0
    from harness import augment, datasets, models

    registry = {"models": models.MODELS, "policies": augment.POLICIES, "datasets": datasets.DATASETS}[args.what]
    for name in registry.list(args.pattern):
        print(f"{name:<28} {registry.describe(name)}")
    return 0


def cmd_ui(args) -> int:
    from harness import tracking

    command = tracking.ui_command(args.host, args.port)
    print(f"MLflow UI for {tracking.display_uri()} at http://{args.host}:{args.port} (Ctrl-C stops it)")
    try:
        return subprocess.call(command)
    except KeyboardInterrupt:
        return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="harness",
        description="Benchmark harness for multi-digit street-number recognition (Goodfellow et al. 2014).",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def overrides(p):
        p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="override a spec value, e.g. --set train.epochs=3 (repeatable; type-checked)")

    p = sub.add_parser("quickstart", help="generate the embedded dataset, train, evaluate, report (offline)",
                       description="Generate (or reuse) the embedded synthetic dataset, prepare it, train the "
                                   "quickstart model, evaluate it on the held-out split, log everything to MLflow "
                                   "and write reports/quickstart/README.md.")
    overrides(p)
    p.set_defaults(func=cmd_quickstart)

    p = sub.add_parser("train", help="train and evaluate one experiment spec",
                       description="Train the experiment in SPEC (a YAML file, or a name in experiments/), "
                                   "evaluate it on the held-out split, log to MLflow and write reports/<name>/.")
    p.add_argument("spec", metavar="SPEC", help="spec file or experiment name")
    overrides(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="evaluate a run's model (or a .keras file) on a split",
                       description="Evaluate the model of an MLflow run (by run id) on a split of its spec's data, "
                                   "or a .keras model file on a prepared split file given with --data.")
    p.add_argument("target", metavar="RUN_OR_MODEL", help="MLflow run id, or a .keras model file")
    p.add_argument("--split", default="test", choices=["train", "val", "test"], help="split (default: test)")
    p.add_argument("--data", metavar="PREPARED.h5", help="a prepared split file to evaluate on instead")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("list", help="list models, augmentation policies, datasets or experiments",
                       description="List registered names (with a shell-style pattern, e.g. 'cnn*').")
    p.add_argument("what", choices=["models", "policies", "datasets", "experiments"])
    p.add_argument("pattern", nargs="?", default="*")
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("ui", help="open the MLflow UI on the store runs are written to (127.0.0.1)",
                       description="Start the MLflow UI on the same tracking store the harness writes to "
                                   "(MLFLOW_TRACKING_URI, else ./mlflow.db), bound to 127.0.0.1 by default.")
    p.add_argument("--host", default="127.0.0.1", help="interface to bind (default: 127.0.0.1, this machine only)")
    p.add_argument("--port", type=int, default=5000)
    p.set_defaults(func=cmd_ui)
    return parser


def main(argv: list[str] | None = None) -> int:
    from harness.backend import quiet_environment

    quiet_environment()
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except HarnessError as exc:
        print(f"harness: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("harness: interrupted; run the same command again to resume", file=sys.stderr)
        return 130
