#!/usr/bin/env bash
# The GPU figures the accuracy and speed floors ask for, in steps sized for a short slot on one GPU
# machine without TensorFlow or internet (KERAS_BACKEND=jax):
#
#   throughput  benchmarks/gpu_throughput.py: goodfellow2014 and the plain-PyTorch reference at batch
#               32, 128 and 512, fp32 and bf16, jit on (the reference: AMP + torch.compile); the
#               input pipeline's images/s and data wait                                 (<= 240 s)
#   synthetic   benchmarks/time_to_accuracy.py: report2016 with the report policy on 40,000 drawn
#               street numbers to 95% validation sequence accuracy (experiments/report2016_synthetic)
#               in bf16, then its test set                                               (<= 300 s)
#   mnist       the same to 98% on MNIST-composite (40,000; needs data/mnist/, see below) (<= 240 s)
#
# Each step has its own time limit, writes its log (and JSON) to OUT as it goes, and a step that runs
# out of time or fails does not stop the next one. MLflow runs go to OUT/mlflow.db.
#
# Here, from the repository root (PyPI reachable; MNIST from ../shared/data/mnist or any folder with
# the four IDX files):
#   bash benchmarks/device_wheels.sh                   # build/wheels, about 22 MiB
#   mkdir -p data/mnist && cp ../shared/data/mnist/*.gz data/mnist/
# There, with build/wheels and data/mnist carried:
#   bash benchmarks/gpu_floors.sh OUT [STEP ...]        # default: throughput synthetic mnist
# --quick runs every step at CPU size (small batches, 400 numbers, one epoch): a check of the
# plumbing, no figures worth keeping.
set -uo pipefail

quick=0
if [[ ${1:-} == --quick ]]; then quick=1; shift; fi
out=${1:?usage: bash benchmarks/gpu_floors.sh [--quick] OUT [throughput] [synthetic] [mnist]}
shift
steps=("$@")
[[ ${#steps[@]} -gt 0 ]] || steps=(throughput synthetic mnist)
for name in "${steps[@]}"; do
    [[ $name =~ ^(throughput|synthetic|mnist)$ ]] || { echo "gpu_floors: no step '$name' (throughput, synthetic, mnist)" >&2; exit 2; }
done
mkdir -p "$out"
out=$(cd "$out" && pwd)

if ! python3 -c "import keras, keras_tuner, mlflow" 2>/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
        build/wheels/*.whl || { echo "gpu_floors: cannot install build/wheels (run benchmarks/device_wheels.sh here first)" >&2; exit 2; }
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export KERAS_BACKEND=${KERAS_BACKEND:-jax} PYTHONUNBUFFERED=1 MLFLOW_TRACKING_URI=sqlite:///$out/mlflow.db
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader \
    | tee "$out/device.txt"

# step NAME LIMIT_SECONDS COMMAND...: run it under its limit, its output to the console and OUT/NAME.log
step() {
    local name=$1 limit=$2
    shift 2
    echo "== $name (at most $limit s): $*"
    local start=$SECONDS
    timeout --signal=INT --kill-after=20 "$limit" "$@" 2>&1 | tee "$out/$name.log"
    local rc=${PIPESTATUS[0]}
    echo "== $name: exit $rc after $((SECONDS - start)) s$([[ $rc == 124 ]] && echo ' (its time limit)')"
}

if ((quick)); then
    throughput=(--quick --backends "$KERAS_BACKEND" --models goodfellow2014)
    accuracy=(--max-epochs 1 --set data.options.train=400 --set data.options.test=100 --set train.batch_size=32)
else
    throughput=(--backends "$KERAS_BACKEND" --models goodfellow2014 --batches 32,128,512 --precisions fp32,bf16 --jit on)
    accuracy=(--max-epochs 15 --set data.options.train=40000 --set train.precision=bf16)
fi

for name in "${steps[@]}"; do
    case $name in
        throughput) step throughput 240 python3 benchmarks/gpu_throughput.py "${throughput[@]}" --json "$out/throughput.json" ;;
        synthetic) step synthetic 300 python3 benchmarks/time_to_accuracy.py --spec report2016_synthetic \
            "${accuracy[@]}" --json "$out/synthetic.json" ;;
        mnist) step mnist 240 python3 benchmarks/time_to_accuracy.py --spec report2016_mnist_composite \
            "${accuracy[@]}" --json "$out/mnist.json" ;;
    esac
done
