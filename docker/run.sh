#!/bin/sh
# Run a bnnflow command in the bnnflow image, e.g.  docker/run.sh build resnete --board pynq-z2
#
#   docker/run.sh [--dry-run] [--image IMAGE] [--build-dir DIR] [--] BNNFLOW_ARGS...
#
# The working tree is mounted at /bnnflow (the image's editable install, so your checkout runs), DIR
# (default: ./build of the repository) at /bnnflow/build, the CIFAR-10 folder at /data, all as your
# uid:gid. With FINN_XILINX_PATH (e.g. /tools/Xilinx) and FINN_XILINX_VERSION (default 2024.2) set,
# the Xilinx install is mounted read-only at the same path and the entrypoint sources its settings64.sh.
# Environment: BNNFLOW_IMAGE (default bnnflow), BNNFLOW_DOCKER (default docker; podman works too),
# BNNFLOW_DATA (CIFAR-10 folder; default as bnnflow's own: ../shared/data, else ~/.cache/bnnflow/cifar10),
# BNNFLOW_HLS_DEPS (finn-hlslib + open-source ap_int headers for `verify --sim`; default ../shared/vendor
# where it exists), mounted read-only at /hls-deps.
# --dry-run prints the docker command instead of running it.
set -eu
die() { echo "docker/run.sh: error: $*" >&2; exit 2; }
abs() { case $1 in /*) echo "$1" ;; *) echo "$PWD/$1" ;; esac; }
repo=$(cd "$(dirname "$0")/.." && pwd)
image=${BNNFLOW_IMAGE:-bnnflow}
docker=${BNNFLOW_DOCKER:-docker}
outdir=$repo/build
dry=
while [ $# -gt 0 ]; do
  case $1 in
    --dry-run) dry=1 ;;
    --image) [ $# -ge 2 ] || die "--image needs an image name."; image=$2; shift ;;
    --image=*) image=${1#*=} ;;
    --build-dir) [ $# -ge 2 ] || die "--build-dir needs a folder."; outdir=$2; shift ;;
    --build-dir=*) outdir=${1#*=} ;;
    -h|--help) sed -n '2,14s/^# \{0,1\}//p' "$0"; exit 0 ;;
    --) shift; break ;;
    *) break ;;
  esac
  shift
done
[ $# -gt 0 ] || die "no bnnflow command given: try 'docker/run.sh build resnete' or 'docker/run.sh --help'."

if [ -n "${BNNFLOW_DATA:-}" ]; then data=$BNNFLOW_DATA
elif [ -d "$repo/../shared/data" ]; then data=$(cd "$repo/../shared/data" && pwd)
else data=${HOME:-/tmp}/.cache/bnnflow/cifar10
fi
if [ -n "${BNNFLOW_HLS_DEPS:-}" ]; then
  [ -d "$BNNFLOW_HLS_DEPS" ] || die "BNNFLOW_HLS_DEPS=$BNNFLOW_HLS_DEPS is not a folder: point it at finn-hlslib and HLS_arbitrary_Precision_Types, or unset it."
  deps=$BNNFLOW_HLS_DEPS
elif [ -d "$repo/../shared/vendor" ]; then deps=$(cd "$repo/../shared/vendor" && pwd -P)
else deps=
fi
xpath=${FINN_XILINX_PATH:-}
xver=${FINN_XILINX_VERSION:-2024.2}
if [ -n "$xpath" ]; then
  [ -d "$xpath" ] || die "FINN_XILINX_PATH=$xpath is not a folder: set it to the Xilinx install root (e.g. /tools/Xilinx) or unset it to build without Vivado."
  xpath=$(cd "$xpath" && pwd)
  found=
  for d in "$xpath/Vivado/$xver" "$xpath/Vitis_HLS/$xver" "$xpath/Vitis/$xver" "$xpath/$xver"; do
    [ -d "$d" ] && found=1
  done
  [ -n "$found" ] || die "FINN_XILINX_PATH=$xpath has no Vivado/$xver, Vitis_HLS/$xver, Vitis/$xver or $xver folder: set FINN_XILINX_VERSION to the installed release."
fi
if [ -z "$dry" ]; then
  command -v "$docker" >/dev/null 2>&1 || die "'$docker' not found: install Docker, or set BNNFLOW_DOCKER=podman."
  mkdir -p "$outdir" "$data"  # so that docker does not create them as root
fi
outdir=$(abs "$outdir")
data=$(abs "$data")

# Append docker's options after the bnnflow arguments, then rotate those to the end (POSIX sh has no arrays).
n=$#
set -- "$@" run --rm --user "$(id -u):$(id -g)" -v "$repo:/bnnflow" -w /bnnflow -v "$outdir:/bnnflow/build" \
  -v "$data:/data" -e BNNFLOW_DATA=/data
if [ -t 0 ] && [ -t 1 ]; then set -- "$@" -it; fi
if [ -n "$deps" ]; then set -- "$@" -v "$(abs "$deps"):/hls-deps:ro" -e BNNFLOW_HLS_DEPS=/hls-deps; fi
if [ -n "$xpath" ]; then
  set -- "$@" -v "$xpath:$xpath:ro" -e "FINN_XILINX_PATH=$xpath" -e "FINN_XILINX_VERSION=$xver"
fi
for v in XILINXD_LICENSE_FILE LM_LICENSE_FILE; do
  if eval "[ -n \"\${$v:-}\" ]"; then set -- "$@" -e "$v"; fi
done
set -- "$@" "$image" bnnflow
while [ "$n" -gt 0 ]; do
  a=$1; shift; set -- "$@" "$a"; n=$((n - 1))
done

if [ -n "$dry" ]; then
  q() { case $1 in *[!A-Za-z0-9_./:=@%+,-]*|'') printf "'%s'" "$(printf '%s' "$1" | sed "s/'/'\\\\''/g")" ;; *) printf '%s' "$1" ;; esac; }
  printf '%s' "$docker"
  for a in "$@"; do printf ' '; q "$a"; done
  echo
  exit 0
fi
exec "$docker" "$@"
