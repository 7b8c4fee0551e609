#!/usr/bin/env bash
# device-bundle: packs what the GPU machine runs into .device/ (git-ignored),
# for the device tool to carry: the moba Python package with libMobaC.so
# (self-contained: MLIR and LLVM linked in) compressed, since it is larger
# than one call may carry, and the check script. Nothing is built there.
#
#   bash scripts/device-bundle.sh            # after scripts/build.sh
#   on the device: bash .device/run.sh MODE   # see test/device/gpu_check.py
#                  bash .device/pytest.sh     # python/tests/test_torch_ops.py
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build=${MOBA_BUILD_DIR:-$root/build}
out=$root/.device
rm -rf "$out" && mkdir -p "$out/moba"
cp "$build"/python/moba/*.py "$out/moba/"
gzip -9 -c "$build/python/moba/libMobaC.so" > "$out/moba/libMobaC.so.gz"
cp "$root/test/device/gpu_check.py" "$root/test/device/nan_check.py" \
   "$root/python/tests/reference.py" "$root"/bench/*.py "$out/"
# The torch ops' pytest file and what it imports, for pytest.sh: the device
# has the torch (>= 2.4) those tests need, this machine does not.
mkdir -p "$out/tests"
cp "$root"/python/tests/{conftest,reference,test_grad,test_torch_ops}.py \
   "$out/tests/"
# The peers' code (../shared/bench) travels with the bundle when it is there.
if [ -d "$root/../shared/bench" ]; then
  mkdir -p "$out/peers" && cp "$root"/../shared/bench/*.py "$out/peers/"
fi
cat > "$out/run.sh" <<'RUN'
#!/usr/bin/env bash
# Unpacks the library once, then runs gpu_check.py with the given arguments.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
[ -f "$here/moba/libMobaC.so" ] || gunzip -k "$here/moba/libMobaC.so.gz"
export PYTHONPATH="$here${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
exec python3 "$here/gpu_check.py" "$@"
RUN
# bench.sh and tune.sh: the same environment for bench/moba_bench.py and
# bench/tune.py.
for tool in bench:moba_bench tune:tune; do
  sed -e "s|gpu_check.py|${tool#*:}.py|" \
      -e "s|runs gpu_check.py|runs ${tool#*:}.py|" "$out/run.sh" \
      > "$out/${tool%%:*}.sh"
done
sed -i 's|exec python3|export MOBA_PEERS="$here/peers"\nexec python3|' \
  "$out/bench.sh"
# pytest.sh: python/tests/test_torch_ops.py on the device's torch (pytest
# must be installed there).
cat > "$out/pytest.sh" <<'PYTEST'
#!/usr/bin/env bash
# usage: pytest.sh [pytest args]; runs tests/test_torch_ops.py.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
[ -f "$here/moba/libMobaC.so" ] || gunzip -k "$here/moba/libMobaC.so.gz"
export PYTHONPATH="$here:$here/tests" PYTHONUNBUFFERED=1
python3 -c "import pytest" 2>/dev/null ||
  { echo "pytest.sh: pytest is not installed on this machine" >&2; exit 2; }
exec python3 -m pytest -p no:cacheprovider -q -rs \
  "$here/tests/test_torch_ops.py" "$@"
PYTEST
# sanitize.sh: one compute-sanitizer tool over the grid in interleaved
# parts (gpu_check.py --slice), as many as fit a time budget, since one
# sanitized grid takes longer than a device call may run.
cat > "$out/sanitize.sh" <<'SAN'
#!/usr/bin/env bash
# usage: sanitize.sh TOOL PARTS FIRST BUDGET_S [gpu_check.py grid args]
# Runs parts FIRST, FIRST+1, ... of PARTS (slices i::PARTS) until the next
# would pass BUDGET_S seconds; each part's log goes to $OUT (or /tmp).
# MOBA_SANITIZE_MODE=grad sanitizes the backward's grid instead.
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
[ -f "$here/moba/libMobaC.so" ] || gunzip -k "$here/moba/libMobaC.so.gz"
export PYTHONPATH="$here" PYTHONUNBUFFERED=1
tool=$1 parts=$2 first=$3 budget=$4; shift 4
mode=${MOBA_SANITIZE_MODE:-grid}
logs=${OUT:-/tmp}
t0=$(date +%s)
for ((i = first; i < parts; i++)); do
  s=$(date +%s)
  compute-sanitizer --tool "$tool" --target-processes all --error-exitcode 9 \
    --print-limit 20 python3 "$here/gpu_check.py" "$mode" --workers 14 \
    --slice "$i::$parts" "$@" > "$logs/$tool-$i.log" 2>&1
  rc=$?
  e=$(date +%s)
  echo "$tool part $i::$parts rc=$rc $((e - s)) s:" \
    "$(grep "^$mode:" "$logs/$tool-$i.log")"
  grep -h "ERROR SUMMARY\|RACECHECK SUMMARY" "$logs/$tool-$i.log" |
    sort | uniq -c
  if (( e - t0 + (e - s) > budget )); then echo "stop after part $i"; break; fi
done
SAN
chmod +x "$out"/*.sh
du -sh "$out"
