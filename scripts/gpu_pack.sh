#!/bin/sh
# gpu_pack.sh - build here for the GPU machine; run from anywhere, on this machine.
#
# Builds the whole tree (library, hstu, tests, CUDA sources) into .device/build
# with a portable CPU target (x86-64-v3: the GPU machine's processor is not
# this one), builds the GPU benchmark (bench/bench_gpu.c) beside it, copies
# the executables into .device/bin, and into .device/lib the shared libraries
# they need that the GPU machine (Ubuntu 24.04, CUDA 13.0 with cuBLAS,
# OpenBLAS, jansson) may lack. A separate build directory keeps this build's
# flags from mixing with build/'s; only bin and lib travel (objects stay).
#
# Then a device call is:
#   run(carry: [".device/bin", ".device/lib"], command: "sh scripts/gpu_check.sh")
# (.device is git-ignored; what travels must stay under 64 MiB with the tree).
# Arguments are passed to make (e.g. a variable override).
set -eu
cd "$(dirname "$0")/.."
BUILD=.device/build
ARCH=${ARCH:-x86-64-v3}
JOBS=$(nproc 2>/dev/null || echo 2)
mkdir -p .device/lib .device/bin

# A flag change (ARCH, CUDA on/off) is not seen by make: start over then.
stamp="ARCH=$ARCH NVCC=$(command -v nvcc || ls /usr/local/cuda/bin/nvcc 2>/dev/null || echo none)"
if [ -f "$BUILD/.flags" ] && [ "$(cat "$BUILD/.flags")" != "$stamp" ]; then
    rm -rf "$BUILD"
fi
mkdir -p "$BUILD"
echo "$stamp" >"$BUILD/.flags"

export CFLAGS="-O2 -g1" # line tables only: keeps .device small
make -j"$JOBS" BUILD="$BUILD" ARCH="$ARCH" "$@"

# The benchmark, with the Makefile's own flags.
var() { make -s --no-print-directory BUILD="$BUILD" ARCH="$ARCH" "$@" \
        --eval='print-%: ; @echo $($*)' "print-$v"; }
v=CC; CC=$(var "$@")
v=CFLAGS; CFLAGS_ALL=$(var "$@")
v=LDLIBS; LDLIBS_ALL=$(var "$@")
# shellcheck disable=SC2086
for b in bench_gpu bench_cache_gpu; do
    $CC $CFLAGS_ALL bench/$b.c "$BUILD/libhstu.a" $LDLIBS_ALL -o "$BUILD/$b"
done

# Shared libraries: everything the binaries resolve here except what the GPU
# machine has for sure (glibc, the C++ and GCC runtimes, CUDA's libraries,
# jansson). OpenBLAS goes too: the machine's variant is unknown, and ours
# (OpenMP) is the one the CPU tests assume. Each travels xz-compressed
# (OpenBLAS: 36 MB -> 4 MB); gpu_check.sh unpacks them.
rm -f .device/lib/* .device/bin/*
for f in "$BUILD/hstu" "$BUILD"/tests/test_* "$BUILD/bench_gpu" "$BUILD/bench_cache_gpu"; do
    case "$f" in *.o|*.d) ;; *) [ -x "$f" ] && cp "$f" .device/bin/ ;; esac
done
for f in .device/bin/*; do
    ldd "$f" 2>/dev/null
done | awk '/=>/ && $3 ~ /^\// {print $1, $3}' | sort -u | while read -r name path; do
    case "$name" in
    linux-vdso*|ld-linux*|libc.so*|libm.so*|libdl.so*|librt.so*|libpthread.so*|libstdc++*|libgcc_s*) ;;
    libcublas*|libcudart*|libcuda.so*|libnvidia*|libjansson*) ;;
    *) xz -T0 -6 -c "$path" >".device/lib/$name.xz" ;;
    esac
done

# Binaries travel xz-compressed too (mostly device code: 8 MB -> 1 MB).
for f in .device/bin/*; do
    case "$f" in *.xz) ;; *) xz -T0 -6 -f "$f" ;; esac
done

size=$(du -cm .device/bin .device/lib | tail -n 1 | cut -f1)
echo "gpu_pack: .device/bin and .device/lib hold ${size} MiB: $(ls .device/bin | tr '\n' ' ')+ $(ls .device/lib | tr '\n' ' ')"
if [ "$size" -gt 56 ]; then
    echo "gpu_pack: warning: over 56 MiB; a device call carries at most 64 MiB with the source tree" >&2
fi
