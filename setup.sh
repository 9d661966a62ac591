#!/usr/bin/env bash
# Create .venv with bnnflow's pinned dependencies (idempotent; re-runs only when a lock file changes).
#
# Why --no-deps: finn-plus 1.6.1 pins brevitas 0.13.0, which declares setuptools<70, while torch 2.13.0
# declares setuptools>=77; pip's resolver refuses the pair although they work together (bnnflow.compat
# holds the one shim needed). So every package, transitive ones included, is pinned in requirements/*.lock.
# torch 2.13.0 is the CPU build (PyTorch's CPU index or a local wheel); the CUDA build pip would pick for
# finn-plus alone makes a ~6 GB venv instead of ~1.6 GB.
# --deps-only: the locked packages without bnnflow itself (docker/Dockerfile's dependency layer).
# Every installed module is byte-compiled ahead, as pip does, but on every core (compileall -j 0) instead
# of pip's one file after another. Not leaving it to the first import: where PYTHONDONTWRITEBYTECODE is set
# (many CI machines and containers, this one too) nothing would keep that compile, and every process would
# compile torch and FINN anew (~6 CPU-seconds each here).
set -euo pipefail
DEPS_ONLY=0
case "${1:-}" in
  "") ;;
  --deps-only) DEPS_ONLY=1 ;;
  *) echo "setup.sh: unknown option '$1' (the only one is --deps-only)." >&2; exit 2 ;;
esac
cd "$(dirname "$0")"
VENV=${BNNFLOW_VENV:-.venv}
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null 2>&1 || PY=python3
"$PY" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' || {
  echo "setup.sh: bnnflow needs Python 3.11 (finn-plus 1.6.1 and the pinned wheels); set PYTHON=/path/to/python3.11." >&2
  exit 1
}
LOCKS="requirements/runtime.lock requirements/test.lock"
STAMP="$VENV/.bnnflow-lock.sha256"
want=$(cat $LOCKS pyproject.toml | sha256sum | cut -d' ' -f1)
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ] && "$VENV/bin/python" -c 'import bnnflow' 2>/dev/null; then
  exit 0
fi
start=$(date +%s)
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check -q)
# torch==2.13.0: a local CPU wheel where pip's config finds one; elsewhere set
# BNNFLOW_TORCH_INDEX=https://download.pytorch.org/whl/cpu for the CPU build (PyPI's default is the CUDA build).
EXTRA=()
[ -n "${BNNFLOW_TORCH_INDEX:-}" ] && EXTRA=(--extra-index-url "$BNNFLOW_TORCH_INDEX")
"${PIP[@]}" install --no-deps --no-compile "${EXTRA[@]}" -r requirements/runtime.lock -r requirements/test.lock \
  2> >(grep -v "is ignored: it is neither" >&2)
# like pip, skip the files that are not Python 3.11 (torch ships a 3.12-only test helper)
"$VENV/bin/python" -W ignore -m compileall -qq -j 0 "$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_path("purelib"))')" || true
if [ "$DEPS_ONLY" = 1 ]; then
  "$VENV/bin/python" -c 'import finn, brevitas, qonnx'
  echo "setup.sh: dependencies in $VENV ready in $(( $(date +%s) - start )) s."
  exit 0
fi
"${PIP[@]}" install --no-deps --no-build-isolation -e . 2> >(grep -v "is ignored: it is neither" >&2)
"$VENV/bin/python" -c 'import bnnflow.compat, finn, brevitas, qonnx' 
echo "$want" > "$STAMP"
echo "setup.sh: $VENV ready in $(( $(date +%s) - start )) s ($(du -sh "$VENV" | cut -f1))."
