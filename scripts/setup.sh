#!/bin/sh
# Installs the Debian packages hstu needs to build, test and benchmark.
# Idempotent: installs only what is missing (apt-get update runs only then).
# Run as root (or through sudo) on Debian 12 / Ubuntu 22.04 or later.
#
#   build:  gcc, make (build-essential), OpenBLAS (OpenMP variant), jansson,
#           libmicrohttpd (hstu serve)
#   tests:  clang + its libFuzzer runtime (the safetensors fuzzer),
#           python3-torch + numpy (the independent PyTorch reference)
# CUDA (nvcc) is not a Debian package here: when /usr/local/cuda/bin/nvcc or
# nvcc on PATH exists, `make` also compiles the CUDA sources.
set -eu

PACKAGES="build-essential libopenblas-dev libopenblas-openmp-dev libjansson-dev libmicrohttpd-dev"
case "${1:-all}" in
    build) ;;
    all|test) PACKAGES="$PACKAGES clang libclang-rt-14-dev python3 python3-torch python3-numpy" ;;
    -h|--help)
        echo "usage: scripts/setup.sh [build|test|all]   (default all)"
        echo "Installs the Debian packages for building (build) or building and testing (test, all)."
        exit 0 ;;
    *) echo "setup.sh: unknown argument '$1' (use build, test or all)" >&2; exit 2 ;;
esac

missing=""
for p in $PACKAGES; do
    # libclang-rt-14-dev is clang 14's; newer distributions name it after their clang.
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
        missing="$missing $p"
    fi
done
if [ -z "$missing" ]; then
    echo "setup.sh: all packages present"
    exit 0
fi
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
echo "setup.sh: installing$missing"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends $missing >/dev/null
echo "setup.sh: done"
