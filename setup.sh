#!/usr/bin/env bash
# Create .venv with bnnflow's pinned dependencies (idempotent; re-runs only when a lock file changes).
#
# Why --no-deps: finn-plus 1.6.1 pins brevitas 0.13.0, which declares setuptools<70, while torch 2.13.0
# declares setuptools>=77; pip's resolver refuses the pair although they work together (bnnflow.compat
# holds the one shim needed). So every package, transitive ones included, is pinned in requirements/*.lock.
# torch 2.13.0 is the CPU build (PyTorch's CPU index or a local wheel); the CUDA build pip would pick for
# finn-plus alone makes a ~6 GB venv instead of ~1.6 GB.
# --deps-only: the locked packages without bnnflow itself (docker/Dockerfile's dependency layer).
# Every installed module (but the packages' own tests) is byte-compiled ahead, as pip does, but on every
# core (compileall -j 0) instead of pip's one file after another. Not leaving it to the first import:
# where PYTHONDONTWRITEBYTECODE is set (many CI machines and containers, this one too) nothing would keep
# that compile, and every process would compile torch and FINN anew (~6 CPU-seconds each here).
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
fresh=0
[ -x "$VENV/bin/python" ] || { "$PY" -m venv "$VENV"; fresh=1; }
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check -q)
# torch==2.13.0: a local CPU wheel where pip's config finds one; elsewhere set
# BNNFLOW_TORCH_INDEX=https://download.pytorch.org/whl/cpu for the CPU build (PyPI's default is the CUDA build).
EXTRA=()
[ -n "${BNNFLOW_TORCH_INDEX:-}" ] && EXTRA=(--extra-index-url "$BNNFLOW_TORCH_INDEX")
install=("${PIP[@]}" install --no-deps --no-compile "${EXTRA[@]}")
# pip warns on every call about the extra index folders a machine lacks; its other messages stay
pip_quiet() { "$@" 2> >(grep -v "is ignored: it is neither" >&2); }
if [ "$fresh" = 1 ]; then
  # A new venv: two pips side by side, each with half the pins, into staging prefixes that then merge by
  # hard links (same layout, so the RECORD files stay right). Most of pip's time is reading the index
  # pages one after another, so the second core halves it. An existing venv takes the one-pip path below,
  # which also removes the versions a changed lock replaces.
  grep -hv '^[[:space:]]*\(#\|$\)' requirements/runtime.lock requirements/test.lock |
    awk -v d="$VENV" '{print > (d "/.pins" NR % 2)}'
  pids=()
  for half in 0 1; do
    pip_quiet "${install[@]}" --no-warn-script-location --prefix "$VENV/.stage$half" -r "$VENV/.pins$half" &
    pids+=($!)
  done
  failed=0  # wait for both halves before cleaning up, so a failing one does not leave the other writing
  for pid in "${pids[@]}"; do wait "$pid" || failed=1; done
  [ "$failed" = 0 ] && cp -al "$VENV/.stage0/." "$VENV/.stage1/." "$VENV/"
  rm -rf "$VENV/.stage0" "$VENV/.stage1" "$VENV/.pins0" "$VENV/.pins1"
  [ "$failed" = 0 ] || { echo "setup.sh: pip could not install the pinned packages (its message is above)." >&2; exit 1; }
else
  pip_quiet "${install[@]}" -r requirements/runtime.lock -r requirements/test.lock
fi
# like pip, skip the files that are not Python 3.11 (torch ships a 3.12-only test helper), and the
# packages' own test suites, which nothing here imports
"$VENV/bin/python" -W ignore -m compileall -qq -j 0 -x 'site-packages/.*/tests?/' "$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_path("purelib"))')" || true
if [ "$DEPS_ONLY" = 1 ]; then
  "$VENV/bin/python" -c 'import finn, brevitas, qonnx'
  echo "setup.sh: dependencies in $VENV ready in $(( $(date +%s) - start )) s."
  exit 0
fi
pip_quiet "${PIP[@]}" install --no-deps --no-build-isolation -e .
"$VENV/bin/python" -c 'import bnnflow.compat, finn, brevitas, qonnx' 
echo "$want" > "$STAMP"
echo "setup.sh: $VENV ready in $(( $(date +%s) - start )) s ($(du -sh "$VENV" | cut -f1))."
