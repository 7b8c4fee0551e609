#!/usr/bin/env bash
# Builds moba-mlir (installing missing Debian packages first) and runs every
# test: the lit suite (check-moba), then the Python package's pytest suite
# with Debian's python3 (which has numpy and pytest). Prints one closing line,
# "tests: N passed, M failed", and exits non-zero on any failure.
#
#   scripts/test.sh [build-dir]
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
build=${1:-$root/build}

bash "$root/scripts/build.sh" "$build"

log=$(mktemp)
trap 'rm -f "$log"' EXIT
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

# pytest on the CPU: the package as built in $build/python.
pystatus=0
PYTHONPATH="$build/python:$root/python/tests" /usr/bin/python3 -m pytest \
  -p no:cacheprovider -q "$root/python/tests" 2>&1 | tee "$log" || pystatus=$?
pypassed=$(grep -Eo '[0-9]+ passed' "$log" | tail -n1 | grep -Eo '[0-9]+' || true)
pyfailed=$( (grep -Eo '[0-9]+ (failed|errors?)' "$log" || true) |
  awk '{ n += $1 } END { print n + 0 }')
pypassed=${pypassed:-0}
pyfailed=${pyfailed:-0}
if [ "$pypassed" -eq 0 ]; then
  echo "test.sh: pytest ran no test" >&2
  pystatus=1
fi
[ "$pystatus" -eq 0 ] || status=$pystatus

echo "tests: $((passed + pypassed)) passed, $((failed + pyfailed)) failed"
exit "$status"
