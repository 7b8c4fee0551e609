#!/usr/bin/env bash
# Builds moba-mlir (installing missing Debian packages first) and runs every
# test: the lit suite (check-moba), then the Python package's pytest suite on
# the wheel the build wrote, installed into a fresh virtual environment of
# Debian's python3 (which has numpy, pytest and torch). Prints one closing
# line, "tests: N passed, M failed", and exits non-zero on any failure.
#
#   scripts/test.sh [build-dir]
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
build=${1:-$root/build}

bash "$root/scripts/build.sh" "$build"

log=$(mktemp)
scratch=$(mktemp -d)
trap 'rm -f "$log"; rm -rf "$scratch"' EXIT
status=0
/usr/lib/llvm-22/bin/lit -sv "$build/test" 2>&1 | tee "$log" || status=$?

passed=$(sed -n 's/^ *Passed *: *\([0-9]*\).*/\1/p' "$log" | tail -n1)
failed=$(sed -n 's/^ *Failed *: *\([0-9]*\).*/\1/p' "$log" | tail -n1)
passed=${passed:-0}
failed=${failed:-0}
if [ "$passed" -eq 0 ] && [ "$status" -eq 0 ]; then
  echo "test.sh: lit ran no test" >&2
  status=1
fi

# pytest on the CPU, on the package as a user gets it: the wheel in
# $build/dist installed by pip into a fresh virtual environment, not the build
# folder. --system-site-packages lets the environment see Debian's numpy,
# pytest and torch, which do not have moba. PYTHONPATH holds only the tests'
# helpers; the tests that need the build tree's tools (moba-opt, the stand-in
# CUDA driver) find them through MOBA_BUILD_DIR, and test_installed_package.py
# fails unless moba is the installed copy (MOBA_INSTALLED_PREFIX).
pystatus=0
venv=$scratch/venv
wheels=("$build"/dist/moba_mlir-*.whl)
: >"$log"
if [ "${#wheels[@]}" -ne 1 ] || [ ! -f "${wheels[0]}" ]; then
  echo "test.sh: want one wheel in $build/dist, found: ${wheels[*]}" >&2
  pystatus=1
elif ! { /usr/bin/python3 -m venv --system-site-packages "$venv" &&
         "$venv/bin/python" -m pip install --quiet --no-index --no-deps \
           "${wheels[0]}"; }; then
  echo "test.sh: installing ${wheels[0]} into a virtual environment failed" >&2
  pystatus=1
else
  env -u MOBA_LIBRARY MOBA_BUILD_DIR="$build" MOBA_INSTALLED_PREFIX="$venv" \
    PYTHONPATH="$root/python/tests" "$venv/bin/python" -m pytest \
    -p no:cacheprovider -q "$root/python/tests" 2>&1 | tee "$log" ||
    pystatus=$?
fi
# The counts of pytest's closing summary line only ("5 failed, 516 passed,
# 16 skipped in 156.52s"): a test's own output may say "3 failed" too.
summary=$(grep -E '[0-9]+ (passed|failed|errors?).* in [0-9.]+s' "$log" |
  tail -n1 || true)
pypassed=$(echo "$summary" | grep -Eo '[0-9]+ passed' | grep -Eo '[0-9]+' ||
  true)
pyfailed=$( (echo "$summary" | grep -Eo '[0-9]+ (failed|errors?)' || true) |
  awk '{ n += $1 } END { print n + 0 }')
pypassed=${pypassed:-0}
pyfailed=${pyfailed:-0}
if [ "$pystatus" -ne 0 ] && [ "$pyfailed" -eq 0 ]; then
  pyfailed=1
fi
if [ "$pypassed" -eq 0 ]; then
  echo "test.sh: pytest ran no test" >&2
  pystatus=1
  pyfailed=$((pyfailed > 0 ? pyfailed : 1))
fi
[ "$pystatus" -eq 0 ] || status=$pystatus

echo "tests: $((passed + pypassed)) passed, $((failed + pyfailed)) failed"
exit "$status"
