#!/usr/bin/env bash
# Installs what moba-mlir needs from Debian (only what is missing), then
# configures and builds it with ninja (and ccache when present): the tools in
# <build>/bin, the Python package in <build>/python/moba, and its wheel,
# <build>/dist/moba_mlir-<version>-py3-none-linux_<arch>.whl.
#
#   scripts/build.sh [build-dir]      default: build
#
# Idempotent: a second run installs nothing and rebuilds only what changed.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
build=${1:-$root/build}
llvm=/usr/lib/llvm-22

packages=(
  cmake ninja-build ccache g++ git
  llvm-22-dev llvm-22-tools libmlir-22-dev mlir-22-tools clang-22 lld-22
  libzstd-dev zlib1g-dev
  python3 python3-numpy python3-pytest
  # The torch tests (autograd through moba.MobaAttention) on the CPU.
  python3-torch
  # CI installs the wheel into a fresh virtual environment (scripts/test.sh);
  # python3-venv brings ensurepip and the pip it installs there, offline.
  python3-venv
)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" ||
    missing+=("$p")
done
if ((${#missing[@]})); then
  echo "build.sh: installing ${missing[*]}"
  sudo=; [ "$(id -u)" -eq 0 ] || sudo=sudo
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

launcher=()
command -v ccache >/dev/null && launcher=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache -DCMAKE_C_COMPILER_LAUNCHER=ccache)

if [ ! -f "$build/build.ninja" ]; then
  cmake -G Ninja -S "$root" -B "$build" \
    -DCMAKE_BUILD_TYPE=Release \
    -DMLIR_DIR=$llvm/lib/cmake/mlir \
    -DLLVM_EXTERNAL_LIT=$llvm/bin/lit \
    -DLLVM_ENABLE_ASSERTIONS=ON \
    "${launcher[@]}"
fi
cmake --build "$build" --target moba-opt moba-run moba-reference-check \
  moba-python moba-wheel mlir-doc \
  moba-stand-in-cuda
