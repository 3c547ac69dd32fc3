"""Training throughput of the paper-sized models on an accelerator, per Keras backend, against the
device's measured matrix-multiply peak, the input pipeline and a plain-PyTorch yardstick.

    python benchmarks/gpu_throughput.py [--backends jax,torch,tensorflow] [--models goodfellow2014,report2016]
                                        [--batches 32,128,512] [--precisions fp32,bf16] [--jit on,off]
                                        [--steps 20] [--warmup 3] [--data PREPARED.h5] [--json OUT.json]
    python benchmarks/gpu_throughput.py --quick --backends tensorflow   # a CPU check: batch 8/16, fp32, jit auto

For each Keras backend that imports here (each in its own process, as KERAS_BACKEND is fixed per
process; one that does not import is skipped and named), model (at its build sizes: goodfellow2014
64 -> 54x54 crops, report2016 74 -> 64x64), precision (train.precision: fp32, or bf16 mixed
precision) and jit setting (train.jit_compile: on = XLA / torch.compile, off, or auto = the
harness's default), one process builds and compiles the model exactly as `harness train` does
(harness.training.setup.build_for / compile_for, the ``paper`` augmentation policy in the model) and times
``train_on_batch`` on a fixed random batch already on the device, for each batch size (ascending):
``--warmup`` untimed steps (the first compiles), then ``--steps`` timed ones. Each step returns its
loss and metrics to the host, so the timing is synchronous.

Columns:
- images/s and step time; achieved FLOP/s = 3 x the forward FLOPs per image (harness.models.flops) x images/s;
- the same process's measured matmul peak in that backend and compute dtype (a large square matmul
  timed after the training rows; each framework's default math, so TF32 where it uses it for fp32)
  and the achieved share of it;
- peak memory: the device allocator's peak for that batch size (TensorFlow, torch: reset per row;
  JAX cannot reset it: the process's peak so far, batch sizes ascending); on a CPU, the process's
  max RSS, marked "RSS";
- the input pipeline: shuffled batches of a prepared HDF5 split file (harness.data.batches.SplitBatches,
  as `harness train` reads them; ``--data``, or a file of drawn street numbers prepared here with
  harness.data.prepare) pushed through the model's own augmentation layer in training mode on the device,
  in images/s; "data wait" = its time per batch / (its time + the step time): the part of a step
  spent waiting for data, as `harness train` reads batches in the training loop (an upper bound where
  the backend overlaps them); "pipe/train" = pipeline images/s / training images/s, which should be
  at least 2 on a GPU;
- reference: goodfellow2014 in plain PyTorch (benchmarks/reference/goodfellow2014_torch.py: same
  layers and parameter count, torch.autocast for bf16, torch.compile for jit on), timed the same way
  in the same run, and harness / reference images/s. Skipped, and said, where torch is not installed.

CPU figures are labelled as such. Figures only, no assertions (see DESIGN.md, benchmarks/).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import resource
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

BACKENDS = ("tensorflow", "jax", "torch")
MODELS = ("goodfellow2014", "report2016")
DTYPES = {"fp32": "float32", "bf16": "bfloat16"}
# The models' prepared image sizes (harness.models.architectures.build_sizes), known here without loading a backend.
IMAGE_SIZES = {"goodfellow2014": 64, "report2016": 74}
REFERENCE = "torch (plain reference)"


# ------------------------------------------------------------------------------ measurements (children)

def matmul_peak(backend: str, precision: str, size: int, min_seconds: float) -> float:
    """FLOP/s of a size x size matmul in ``backend`` and the precision's compute dtype on the default
    device: repeats until a run takes ``min_seconds``, best of three such runs."""
    dtype = DTYPES[precision]
    if backend == "jax":
        import jax

        a = jax.random.normal(jax.random.key(0), (size, size), dtype=dtype)
        b = jax.random.normal(jax.random.key(1), (size, size), dtype=dtype)
        matmul = jax.jit(lambda x, y: x @ y)

        def run(k: int) -> None:
            for _ in range(k):
                out = matmul(a, b)
            out.block_until_ready()
    elif backend == "tensorflow":
        import tensorflow as tf

        gpus = tf.config.list_logical_devices("GPU")
        with tf.device(gpus[0].name if gpus else "/CPU:0"):
            a = tf.cast(tf.random.normal((size, size), seed=0), dtype)
            b = tf.cast(tf.random.normal((size, size), seed=1), dtype)
        matmul = tf.function(tf.linalg.matmul)

        def run(k: int) -> None:
            for _ in range(k):
                out = matmul(a, b)
            float(out[0, 0])  # kernels run in order: reading one value waits for the last
    elif backend == "torch":
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
        generator = torch.Generator(device=device).manual_seed(0)
        a = torch.randn(size, size, device=device, generator=generator).to(getattr(torch, dtype))
        b = torch.randn(size, size, device=device, generator=generator).to(getattr(torch, dtype))

        def run(k: int) -> None:
            for _ in range(k):
                out = a @ b
            float(out[0, 0])
    else:
        raise ValueError(f"no matmul for backend {backend!r}")
    run(1)  # compiles
    repeats = 1
    while True:
        start = time.perf_counter()
        run(repeats)
        if time.perf_counter() - start >= min_seconds or repeats >= 1 << 16:
            break
        repeats *= 2
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        run(repeats)
        best = min(best, time.perf_counter() - start)
    return 2 * size ** 3 * repeats / best


def _on_device(keras, array: np.ndarray):
    """``array`` as a tensor on the backend's default device (the GPU where there is one)."""
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        gpus = tf.config.list_logical_devices("GPU")
        with tf.device(gpus[0].name if gpus else "/CPU:0"):
            return tf.identity(tf.convert_to_tensor(array))
    return keras.ops.convert_to_tensor(array)  # jax: the default device; torch: Keras' device


def _reset_peak_memory(backend: str) -> None:
    if backend == "tensorflow":
        import tensorflow as tf

        if tf.config.list_logical_devices("GPU"):
            tf.config.experimental.reset_memory_stats("GPU:0")
    elif backend == "torch":
        import torch

        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()


def _peak_memory(backend: str) -> tuple[int, str]:
    """(bytes, what): the accelerator allocator's peak, else this process's max RSS."""
    if backend == "jax":
        import jax

        device = jax.devices()[0]
        stats = device.memory_stats() if device.platform != "cpu" else None
        if stats and "peak_bytes_in_use" in stats:
            return int(stats["peak_bytes_in_use"]), "device (process)"
    elif backend == "tensorflow":
        import tensorflow as tf

        if tf.config.list_logical_devices("GPU"):
            return int(tf.config.experimental.get_memory_info("GPU:0")["peak"]), "device"
    elif backend == "torch":
        import torch

        if torch.cuda.is_available():
            return int(torch.cuda.max_memory_allocated()), "device"
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "RSS"


def _epochs_rate(batches, work, min_seconds: float) -> float:
    """Images/s over whole epochs of ``batches`` (at least one, and ``min_seconds``), each batch
    read and passed to ``work``; the first and the last (possibly partial) batch first, untimed."""
    work(batches[0][0])
    work(batches[len(batches) - 1][0])
    images, start = 0, time.perf_counter()
    while True:
        for i in range(len(batches)):
            batch = batches[i][0]
            work(batch)
            images += len(batch)
        batches.on_epoch_end()
        took = time.perf_counter() - start
        if took >= min_seconds:
            return images / took


def _augmenter(keras, model, jit: bool):
    """The built model's own input layers, uint8 -> [0, 1] -> its augmentation policy in training
    mode, compiled like the model; the output is one number per image, so little comes back."""
    names = [layer.name for layer in model.layers]
    to_unit, policy = model.layers[names.index("to_unit"):names.index("to_unit") + 2]

    class Augmenting(keras.layers.Layer):
        def __init__(self, inner, **kwargs):
            super().__init__(**kwargs)
            self.inner = inner

        def call(self, images):
            return keras.ops.mean(self.inner(images, training=True), axis=(1, 2, 3))

    inputs = keras.Input(model.input_shape[1:], dtype="uint8")
    augmenter = keras.Model(inputs, Augmenting(policy)(to_unit(inputs)))
    augmenter.compile(jit_compile=jit)
    return augmenter.predict_on_batch  # returns numpy: waits for asynchronous backends


def child_train(config: dict) -> dict:
    """One (backend, model, precision, jit) configuration, in this process: a row per batch size."""
    from model_throughput import batch as random_batch
    from model_throughput import timed

    from harness.backend import backend_name, device_name, load_keras, set_random_seed
    from harness.data.batches import SplitBatches
    from harness.models.architectures import build_sizes
    from harness.models.flops import model_flops
    from harness.spec import load_spec
    from harness.training import setup as training

    keras = load_keras()
    backend = backend_name()
    sizes = build_sizes(config["model"])
    spec = load_spec(None, [f"model.name={config['model']}", f"data.image_size={sizes['image_size']}",
                            f"augment.crop_size={sizes['crop_size']}", f"train.precision={config['precision']}",
                            f"train.jit_compile={config['jit']}", f"train.batch_size={max(config['batches'])}"])
    set_random_seed(0)
    model = training.build_for(spec)
    training.compile_for(spec, model, config["steps"])
    jit = bool(model.jit_compile)
    flops = model_flops(model)
    rng = np.random.default_rng(0)
    rows = []
    for size in sorted(config["batches"]):
        row = {"batch": size}
        rows.append(row)
        try:
            data = tuple(_on_device(keras, a) for a in random_batch(rng, size, sizes["image_size"]))
            _reset_peak_memory(backend)
            seconds = timed(lambda: model.train_on_batch(*data), config["warmup"], config["steps"])
            memory, kind = _peak_memory(backend)
            row.update(images_per_sec=size / seconds, step_seconds=seconds,
                       flops_per_sec=3 * flops * size / seconds, peak_memory_bytes=memory, memory_kind=kind)
        except Exception as exc:  # e.g. out of memory at a large batch: the other rows still count
            row["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}"
            print(f"  {backend} {config['model']} batch {size}: {row['error']}", file=sys.stderr, flush=True)
            continue
        print(f"  {backend} {config['model']} {config['precision']} jit={jit} batch {size}: "
              f"{size / seconds:,.1f} images/s", file=sys.stderr, flush=True)
    augment = _augmenter(keras, model, jit)
    for row in rows:
        if "error" in row:
            continue
        batches = SplitBatches(config["data"][str(sizes["image_size"])], row["batch"], shuffle=True, seed=0)
        row["read_images_per_sec"] = _epochs_rate(batches, lambda b: None, config["min_seconds"])
        row["pipeline_images_per_sec"] = _epochs_rate(batches, augment, config["min_seconds"])
    peak = matmul_peak(backend, config["precision"], config["matmul_size"], config["min_seconds"])
    return {"backend": backend, "device": device_name(), "keras": keras.__version__, "jit": jit,
            "flops_per_image": flops, "parameters": model.count_params(), "matmul_peak_flops": peak,
            "matmul_size": config["matmul_size"], "rows": rows}


def child_reference(config: dict) -> dict:
    """The plain-PyTorch goodfellow2014 at one (precision, compile) setting, and torch's matmul peak."""
    import torch
    from reference.goodfellow2014_torch import measure

    jit = config["jit"] == "on" or (config["jit"] == "auto" and torch.cuda.is_available())  # the harness's rule
    rows = measure(config["batches"], steps=config["steps"], warmup=config["warmup"],
                   precision=config["precision"], compile=jit)
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"CPU ({os.cpu_count()} cores)"
    peak = matmul_peak("torch", config["precision"], config["matmul_size"], config["min_seconds"])
    return {"backend": REFERENCE, "device": device, "torch": torch.__version__, "jit": jit,
            "parameters": rows[0]["parameters"] if rows else None, "matmul_peak_flops": peak,
            "matmul_size": config["matmul_size"], "rows": rows}


# ------------------------------------------------------------------------------ orchestration (parent)

def importable(backend: str) -> str | None:
    """None when the backend's package imports here, else why not."""
    for module in ("keras", backend) if backend != REFERENCE else ("torch",):
        if importlib.util.find_spec(module) is None:
            return f"{module} is not installed"
    return None


def pipeline_files(folder: Path, image_sizes: set[int], count: int) -> dict[str, str]:
    """Prepared split files (one per image size) of ``count`` drawn street numbers, made with the
    harness's own record reading and preparation."""
    from pipeline_throughput import draw_split

    from harness.data.prepare import prepare_split
    from harness.data.records import read_records

    raw = folder / "raw"
    draw_split(raw, count, np.random.default_rng(0))
    records = read_records(raw)
    return {str(size): str(prepare_split(records, folder / f"train-{size}.h5", image_size=size, workers=1,
                                         desc=f"prepare {size}x{size}"))
            for size in sorted(image_sizes)}


def run_child(kind: str, backend: str | None, config: dict, folder: Path, timeout: float) -> dict:
    """Runs one measurement in a fresh process (its own session, killed whole on a time-out)."""
    out = folder / f"result-{time.monotonic_ns()}.json"
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    if backend is not None:
        env["KERAS_BACKEND"] = backend
    command = [sys.executable, str(Path(__file__).resolve()), "--child", kind, "--config", json.dumps(config),
               "--out", str(out)]
    process = subprocess.Popen(command, env=env, stdout=2, start_new_session=True)  # its progress to our stderr
    try:
        code = process.wait(timeout=timeout)
    except BaseException as exc:  # a time-out, or Ctrl-C (which its own session does not receive)
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        if isinstance(exc, subprocess.TimeoutExpired):
            return {"error": f"timed out after {timeout:.0f} s"}
        raise
    if code != 0 or not out.exists():
        return {"error": f"exited with code {code} (its output is above)"}
    result = json.loads(out.read_text())
    out.unlink()
    return result


def measure_all(args, folder: Path, save) -> dict:
    """Every configuration and the reference, each in its own process; ``save`` after each one."""
    sizes = {m: IMAGE_SIZES[m] for m in args.models}
    if args.data:
        from harness.data.splitfile import PreparedSplit

        data = {str(PreparedSplit(args.data).image_size): str(args.data)}
    else:
        data = {}
    missing = set(sizes.values()) - {int(s) for s in data}
    if missing:
        count = max(args.pipeline_images, 2 * max(args.batches))
        data.update(pipeline_files(folder, missing, count))
        if args.data:
            print(f"--data {args.data} is {next(iter(data))}x; prepared drawn numbers for {sorted(missing)}",
                  file=sys.stderr)
    common = {"batches": args.batches, "steps": args.steps, "warmup": args.warmup, "data": data,
              "min_seconds": args.min_seconds, "matmul_size": args.matmul_size}
    results = {"configs": [], "skipped": {}}
    for backend in args.backends:
        why = importable(backend)
        if why:
            results["skipped"][backend] = why
            print(f"{backend}: skipped ({why})", file=sys.stderr, flush=True)
            continue
        for model in args.models:
            for precision in args.precisions:
                for jit in args.jit:
                    config = {**common, "model": model, "precision": precision, "jit": jit}
                    print(f"== {backend} {model} {precision} jit {jit}", file=sys.stderr, flush=True)
                    result = run_child("train", backend, config, folder, args.timeout)
                    results["configs"].append({"backend": backend, "model": model, "precision": precision,
                                               "jit_setting": jit, **result})
                    save(results)
    if "goodfellow2014" in args.models and not args.no_reference:
        why = importable(REFERENCE)
        if why:
            results["skipped"][REFERENCE] = why
            print(f"reference: skipped ({why})", file=sys.stderr, flush=True)
        else:
            for precision in args.precisions:
                for jit in args.jit:
                    config = {**common, "model": "goodfellow2014", "precision": precision, "jit": jit}
                    print(f"== {REFERENCE} {precision} compile {jit}", file=sys.stderr, flush=True)
                    result = run_child("reference", None, config, folder, args.timeout)
                    results["configs"].append({"backend": REFERENCE, "model": "goodfellow2014",
                                               "precision": precision, "jit_setting": jit, **result})
                    save(results)
    elif not args.no_reference:
        results["skipped"][REFERENCE] = "it is goodfellow2014, which --models leaves out"
    return results


def flat_rows(results: dict) -> list[dict]:
    """One row per configuration and batch size, with the derived columns."""
    rows = []
    for config in results["configs"]:
        base = {k: config.get(k) for k in ("backend", "model", "precision", "jit_setting", "jit", "device")}
        if "rows" not in config:
            rows.append({**base, "batch": None, "error": config.get("error")})
            continue
        for row in config["rows"]:
            out = {**row, **base, "matmul_peak_flops": config["matmul_peak_flops"]}
            if "images_per_sec" in row:
                out["peak_fraction"] = (row["flops_per_sec"] / config["matmul_peak_flops"]
                                        if "flops_per_sec" in row else None)
                pipeline = row.get("pipeline_images_per_sec")
                if pipeline:
                    per_batch = row["batch"] / pipeline
                    out["data_wait"] = per_batch / (per_batch + row["step_seconds"])
                    out["pipeline_over_train"] = pipeline / row["images_per_sec"]
            rows.append(out)
    reference = {(r["precision"], r["jit"], r["batch"]): r for r in rows  # compiled against compiled
                 if r["backend"] == REFERENCE and "images_per_sec" in r}
    flops = {c["model"]: c["flops_per_image"] for c in results["configs"] if c.get("flops_per_image")}
    for row in rows:
        ref = reference.get((row["precision"], row["jit"], row["batch"]))
        if row["backend"] == REFERENCE and "images_per_sec" in row and "goodfellow2014" in flops:
            row["flops_per_sec"] = 3 * flops["goodfellow2014"] * row["images_per_sec"]  # the same network's work
            row["peak_fraction"] = row["flops_per_sec"] / row["matmul_peak_flops"]
        elif ref and row["model"] == "goodfellow2014" and "images_per_sec" in row:
            row["reference_images_per_sec"] = ref["images_per_sec"]
            row["over_reference"] = row["images_per_sec"] / ref["images_per_sec"]
    return rows


def _accelerated(rows: list[dict]) -> bool:
    return any(r.get("device") and not str(r["device"]).startswith("CPU") for r in rows)


def table(rows: list[dict]) -> str:
    scale, unit = (1e12, "TFLOP/s") if _accelerated(rows) else (1e9, "GFLOP/s")
    lines = [f"| backend | device | model | precision | jit | batch | images/s | step ms | {unit} | matmul peak {unit} "
             "| % of peak | peak memory MiB | pipeline images/s | data wait | pipe/train | reference images/s "
             "| harness/reference |",
             "|---|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]

    def number(value, fmt: str) -> str:
        return "" if value is None else format(value, fmt)

    for r in rows:
        device = "CPU" if str(r.get("device", "")).startswith("CPU") else (r.get("device") or "")
        jit = r.get("jit_setting") if r.get("jit") is None else f"{r['jit_setting']} ({'on' if r['jit'] else 'off'})"
        head = f"| {r['backend']} | {device} | `{r['model']}` | {r['precision']} | {jit} | {number(r['batch'], 'd')} |"
        if "images_per_sec" not in r:
            lines.append(f"{head} {r.get('error') or 'no result'} |" + " |" * 10)
            continue
        memory = r.get("peak_memory_bytes")
        memory = "" if memory is None else f"{memory / 2**20:,.0f}" + (" RSS" if r.get("memory_kind") == "RSS" else "")
        wait = r.get("data_wait")
        lines.append(
            f"{head} {r['images_per_sec']:,.1f} | {1000 * r['step_seconds']:,.1f} | "
            f"{number(r.get('flops_per_sec') and r['flops_per_sec'] / scale, ',.3f')} | "
            f"{r['matmul_peak_flops'] / scale:,.3f} | {number(r.get('peak_fraction') and 100 * r['peak_fraction'], '.1f')} | "
            f"{memory} | {number(r.get('pipeline_images_per_sec'), ',.0f')} | "
            f"{'' if wait is None else f'{100 * wait:.1f}%'} | {number(r.get('pipeline_over_train'), ',.1f')} | "
            f"{number(r.get('reference_images_per_sec'), ',.1f')} | {number(r.get('over_reference'), '.2f')} |")
    return "\n".join(lines)


def _setting(row: dict) -> str:
    return f"{row['backend']} {row['precision']} jit {'on' if row['jit'] else 'off'}"


def best_against_reference(rows: list[dict]) -> list[str]:
    """Per batch size: goodfellow2014's best images/s in the harness (any backend, precision, jit) against
    the reference's best (either precision, compiled or not), the comparison the throughput goal names."""
    lines = []
    timed = [r for r in rows if r.get("model") == "goodfellow2014" and r.get("images_per_sec")]
    for batch in sorted({r["batch"] for r in timed}):
        harness = [r for r in timed if r["batch"] == batch and r["backend"] != REFERENCE]
        reference = [r for r in timed if r["batch"] == batch and r["backend"] == REFERENCE]
        if harness and reference:
            ours = max(harness, key=lambda r: r["images_per_sec"])
            theirs = max(reference, key=lambda r: r["images_per_sec"])
            lines.append(f"goodfellow2014 batch {batch}, best against best: harness {ours['images_per_sec']:,.1f} "
                         f"images/s ({_setting(ours)}) / reference {theirs['images_per_sec']:,.1f} "
                         f"({_setting(theirs)}) = {ours['images_per_sec'] / theirs['images_per_sec']:.2f}x")
    return lines


def notes(results: dict, rows: list[dict]) -> list[str]:
    out = []
    for backend, why in results["skipped"].items():
        out.append(f"skipped {backend}: {why}" + ("; the reference columns are empty" if backend == REFERENCE else ""))
    for config in results["configs"]:
        if config.get("error"):
            out.append(f"{config['backend']} {config['model']} {config['precision']} jit {config['jit_setting']}: "
                       f"{config['error']}")
    devices = sorted({r["device"] for r in rows if r.get("device")})
    if devices and not _accelerated(rows):
        out.append("CPU FIGURES: no accelerator was used in this run; they say nothing about a GPU")
    low = [r for r in rows if r.get("pipeline_over_train") is not None and r["pipeline_over_train"] < 2
           and not str(r.get("device", "")).startswith("CPU")]
    for r in low:
        out.append(f"pipeline below 2x training on {r['device']}: {r['backend']} {r['model']} {r['precision']} "
                   f"batch {r['batch']}: {r['pipeline_over_train']:.2f}x")
    out += best_against_reference(rows)
    if any(r.get("memory_kind") == "device (process)" for r in rows):
        out.append("JAX peak memory: the process's peak so far (JAX cannot reset it); batch sizes run ascending")
    return out


def _list(choices):
    def parse(text: str) -> list[str]:
        values = [v.strip() for v in text.split(",") if v.strip()]
        bad = [v for v in values if v not in choices]
        if bad or not values:
            raise argparse.ArgumentTypeError(f"choose from {', '.join(choices)}; got {text!r}")
        return values
    return parse


def _ints(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"batch sizes must be positive, got {text!r}")
    return values


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="a CPU check: batches 8,16, fp32, jit auto, 2 timed steps after 2, a small pipeline file")
    parser.add_argument("--backends", type=_list(BACKENDS), default=list(BACKENDS),
                        help="Keras backends to try (default: all three; missing ones are skipped)")
    parser.add_argument("--models", type=_list(MODELS), default=list(MODELS))
    parser.add_argument("--batches", type=_ints, default=None, help="batch sizes (default 32,128,512)")
    parser.add_argument("--precisions", type=_list(tuple(DTYPES)), default=None, help="default fp32,bf16")
    parser.add_argument("--jit", type=_list(("on", "off", "auto")), default=None,
                        help="train.jit_compile settings (default on,off)")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per batch size (default 20)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps first; the first compiles (default 3)")
    parser.add_argument("--data", type=Path, help="a prepared split file for the pipeline (default: drawn and prepared here)")
    parser.add_argument("--pipeline-images", type=int, default=None, help="images in the prepared file (default 2048)")
    parser.add_argument("--min-seconds", type=float, default=None, help="least time per pipeline / matmul figure")
    parser.add_argument("--matmul-size", type=int, default=None, help="matmul side (default 8192; --quick 2048)")
    parser.add_argument("--no-reference", action="store_true", help="leave out the plain-PyTorch reference")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds per configuration's process")
    parser.add_argument("--json", type=Path, help="also write every figure here (rewritten after each process)")
    parser.add_argument("--child", choices=("train", "reference"), help=argparse.SUPPRESS)
    parser.add_argument("--config", help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    # warmup 2 at least: JAX was seen compiling again at the second step (timing it cut batch 32's
    # figure by a quarter)
    defaults = ({"batches": [8, 16], "precisions": ["fp32"], "jit": ["auto"], "steps": 2, "warmup": 2,
                 "pipeline_images": 64, "min_seconds": 0.3, "matmul_size": 2048} if args.quick else
                {"batches": [32, 128, 512], "precisions": ["fp32", "bf16"], "jit": ["on", "off"], "steps": 20,
                 "warmup": 3, "pipeline_images": 2048, "min_seconds": 1.0, "matmul_size": 8192})
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.data is not None and not args.data.is_file():
        parser.error(f"--data {args.data}: no such file")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        config = json.loads(args.config)
        result = (child_train if args.child == "train" else child_reference)(config)
        args.out.write_text(json.dumps(result))
        return 0
    started = time.perf_counter()
    header = (f"gpu_throughput: backends {','.join(args.backends)}; models {','.join(args.models)}; batches "
              f"{','.join(map(str, args.batches))}; precisions {','.join(args.precisions)}; jit {','.join(args.jit)}; "
              f"{args.steps} timed steps after {args.warmup}; Python {platform.python_version()}, "
              f"{os.cpu_count()} logical cores, load average {os.getloadavg()[0]:.1f}")
    print(header, flush=True)

    def save(results: dict) -> None:
        if args.json:
            record = {"header": header, "args": {k: str(v) if isinstance(v, Path) else v
                                                 for k, v in vars(args).items() if k not in ("child", "config", "out")},
                      **results, "rows": flat_rows(results)}
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(record, indent=1))

    with tempfile.TemporaryDirectory(prefix="gpu-throughput-") as tmp:
        results = measure_all(args, Path(tmp), save)
    rows = flat_rows(results)
    devices = {f"{c['backend']}: {c['device']}" for c in results["configs"] if c.get("device")}
    for line in sorted(devices):
        print(f"device {line}")
    print(table(rows))
    for line in notes(results, rows):
        print(f"- {line}")
    print(f"took {time.perf_counter() - started:.0f} s; load average at the end {os.getloadavg()[0]:.1f} (1 min), "
          f"{os.cpu_count()} logical cores")
    save(results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
