#!/usr/bin/env bash
# Regenerates the dialect and pass references (mlir-doc) and copies them into
# docs/Dialects/, where test/Docs/dialect-docs.test expects them.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
build=${1:-$root/build}
cmake --build "$build" --target mlir-doc
mkdir -p "$root/docs/Dialects"
cp "$build"/docs/Dialects/Moba.md "$build"/docs/Dialects/MobaPasses.md \
   "$build"/docs/Dialects/MobaConversionPasses.md "$root/docs/Dialects/"
