#!/usr/bin/env bash
# Download the wheels a bare GPU machine lacks for benchmarks/gpu_check.py: bitsandbytes (QLoRA) and optuna
# with the needs its image does not have (alembic, SQLAlchemy, greenlet, colorlog, Mako), pinned to the
# versions CI tests (constraints.txt), for CPython 3.12 on x86-64 Linux (the GPU image's Python; pass
# another version as the first argument). About 50 MB in all. Then, on the GPU machine:
#   python3 -m pip install --no-index --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD
#   python3 benchmarks/gpu_check.py
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${1:-3.12}"
DEST="${WHEELS_DIR:-.whl}"
pin() { grep -i "^$1==" constraints.txt | head -1; }
PKGS=("$(pin bitsandbytes)" "$(pin optuna)" "$(pin alembic)" "$(pin sqlalchemy)" "$(pin colorlog)" "$(pin mako)")
GREENLET="${GREENLET:-greenlet}"  # SQLAlchemy's C helper for async (imported lazily; small)
mkdir -p "$DEST"
python3 -m pip download --no-deps --only-binary=:all: --python-version "$PY" --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64 \
    --platform any -d "$DEST" "${PKGS[@]}" "$GREENLET"
du -ch "$DEST"/*.whl | tail -1
