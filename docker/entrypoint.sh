#!/usr/bin/env bash
# Container entrypoint: set up Vivado / Vitis HLS from the host mount, then run the command.
# FINN's convention: FINN_XILINX_PATH is the install root (e.g. /tools/Xilinx), FINN_XILINX_VERSION
# the release (e.g. 2024.2). Both the <=2024.2 layout (ROOT/Vivado/VER) and the 2025 one
# (ROOT/VER/Vivado) are looked for. Without them bnnflow stops at the first vendor-tool step (exit 3).
set -e
# `docker run --user UID:GID` with a uid the image does not know leaves HOME=/, which it cannot write.
if [ ! -w "${HOME:-/}" ]; then
  export HOME=/tmp/bnnflow-home
  mkdir -p "$HOME"
fi
if [ -n "${FINN_XILINX_PATH:-}" ]; then
  ver=${FINN_XILINX_VERSION:-2024.2}
  found=
  for tool in Vivado Vitis_HLS Vitis; do
    for dir in "$FINN_XILINX_PATH/$tool/$ver" "$FINN_XILINX_PATH/$ver/$tool"; do
      if [ -f "$dir/settings64.sh" ]; then
        # settings64.sh reads unset variables and may return non-zero on harmless checks.
        set +e
        # shellcheck disable=SC1091
        source "$dir/settings64.sh" >/dev/null
        set -e
        found="$found $tool"
        case $tool in
          Vivado) export XILINX_VIVADO=${XILINX_VIVADO:-$dir} ;;
          Vitis_HLS) export XILINX_HLS=${XILINX_HLS:-$dir} ;;
        esac
      fi
    done
  done
  if [ -z "$found" ]; then
    echo "bnnflow-entrypoint: no settings64.sh for $ver under $FINN_XILINX_PATH; continuing without Vivado / Vitis HLS." >&2
  fi
fi
exec "$@"
