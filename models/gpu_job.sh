#!/bin/sh
# The training call of the prepared GPU job (see models/gpu_job.py): run on the device machine from the
# repo root, with .gpu/part4 and .gpu/whl carried and parts 1-3 stashed by earlier calls.
set -e
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .gpu/whl/*.whl
python3 models/gpu_job.py stash --part .gpu/part4
# bnnflow's top-level folders as the package layout pyproject maps them to (no install on Python 3.12)
rm -rf /tmp/pkg && mkdir -p /tmp/pkg/bnnflow
for f in bnnflow/*; do ln -s "$PWD/$f" /tmp/pkg/bnnflow/; done
for d in models build_flows hw; do ln -s "$PWD/$d" /tmp/pkg/bnnflow/$d; done
export PYTHONPATH=/tmp/site:/tmp/pkg PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
python3 models/gpu_job.py run --store /root/bnnflow-cifar --out "${OUT:-gpu_out}" --minutes "${GPU_MINUTES:-9}" "$@"
