#!/usr/bin/env bash
# Wheels a GPU machine without TensorFlow and without internet needs to run the harness on the JAX or
# PyTorch backend (benchmarks/gpu_throughput.py, benchmarks/time_to_accuracy.py, `harness train`).
#
# The lent GPU machines (python3 3.12, x86_64) already hold PyTorch, JAX, numpy, h5py, pandas, pillow,
# absl-py, rich, ml-dtypes, grpcio, protobuf, requests, pyyaml, click, cloudpickle, anyio, psutil,
# markupsafe, six and nvidia-ml-py; these are what keras, keras-tuner and mlflow-skinny need beyond
# them, plus SQLAlchemy, alembic and cryptography for MLflow's SQLite store (./mlflow.db, the harness's default),
# at the versions the project's own environment is tested with. TensorBoard is left out: the harness
# does not import it. typing-extensions is carried because pydantic needs a newer one than many
# images have.
#
# Here (PyPI reachable), from the repository root:
#   bash benchmarks/device_wheels.sh [DIR] [PYTHON_VERSION]    # default: build/wheels (git-ignored), 3.12
# Then on the GPU machine, with DIR carried (run's carry: ["build/wheels"]), start each command with:
#   python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site build/wheels/*.whl && export PYTHONPATH=/tmp/site || exit;
# and run, e.g. (PYTHONUNBUFFERED so that a command stopped at its limit still shows its progress):
#   export KERAS_BACKEND=jax PYTHONUNBUFFERED=1; python3 -c "import harness.train" &&
#   python3 benchmarks/gpu_throughput.py --backends jax,torch --models goodfellow2014 --jit on --json $OUT/gpu.json 2>&1 | tee $OUT/gpu.log
set -euo pipefail

dir=${1:-build/wheels}
version=${2:-3.12}
packages=(
    keras==3.15.1 namex==0.1.0 optree==0.20.0
    keras-tuner==1.4.8 kt-legacy==1.0.5
    mlflow-skinny==3.17.2 cachetools==7.3.2 databricks-sdk==0.156.0 google-auth==2.62.2
    pyasn1==0.6.5 pyasn1-modules==0.4.2 fastapi==0.165.0 starlette==1.10.0 pydantic==2.14.3
    pydantic-core==2.50.4 annotated-types==0.8.0 typing-inspection==0.4.5 typing-extensions==4.16.0
    gitpython==3.2.1 gitdb==4.0.12 smmap==5.0.3 importlib-metadata==9.1.0
    opentelemetry-api==1.45.2 opentelemetry-sdk==1.45.2 opentelemetry-proto==1.45.2
    opentelemetry-semantic-conventions==0.66b2 python-dotenv==1.2.4 sqlparse==0.6.1 uvicorn==0.54.0
    sqlalchemy==2.1.9 alembic==1.20.1 mako==1.4.3 cryptography==50.0.2 cffi==2.1.1 pycparser==3.12
)

mkdir -p "$dir"
python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version "$version" --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d "$dir" "${packages[@]}"
count=$(find "$dir" -name '*.whl' | wc -l)
echo "$count wheels in $dir for CPython $version on x86_64 Linux: $(du -sh "$dir" | cut -f1) (the device carries at most 64 MiB with the working tree)"
