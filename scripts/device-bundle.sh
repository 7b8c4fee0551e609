#!/usr/bin/env bash
# device-bundle: packs what the GPU machine runs into .device/ (git-ignored),
# for the device tool to carry: the moba wheel that scripts/build.sh wrote
# (the package and the self-contained libMobaC.so, MLIR and LLVM linked in;
# compressed, since the library is larger than one call may carry), the
# check and bench scripts, and scripts that install the wheel on first use.
# Nothing is built there.
#
#   bash scripts/device-bundle.sh            # after scripts/build.sh
#   on the device: bash .device/run.sh MODE   # see test/device/gpu_check.py
#                  (graphs, hf: test/device/torch_check.py)
#                  bash .device/pytest.sh     # python/tests/test_torch_ops.py
#                  bash .device/python.sh SCRIPT [ARGS]   # any other script
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build=${MOBA_BUILD_DIR:-$root/build}
out=$root/.device
wheels=("$build"/dist/moba_mlir-*.whl)
if [ "${#wheels[@]}" -ne 1 ] || [ ! -f "${wheels[0]}" ]; then
  echo "device-bundle.sh: want one wheel in $build/dist (scripts/build.sh" \
       "writes it), found: ${wheels[*]}" >&2
  exit 1
fi
rm -rf "$out" && mkdir -p "$out"
cp "${wheels[0]}" "$out/"
cp "$root/test/device/gpu_check.py" "$root/test/device/nan_check.py" \
   "$root/test/device/paged_check.py" "$root/test/device/torch_check.py" \
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
# setup.sh, sourced by every script below: installs the wheel into
# .device/site once (pip offline and without dependencies, since the device
# has numpy and torch already; a plain unzip where pip is missing, as this
# wheel's root is the installed layout, dist-info included) and puts site/
# and .device/ on PYTHONPATH. site/ is named by the wheel's dist-info, so a
# new bundle's wheel replaces an older install.
cat > "$out/setup.sh" <<'SETUP'
# Sourced (`source setup.sh || exit`): installs the moba wheel beside this
# file on first use, then exports PYTHONPATH (the installed package, then this
# folder's scripts). Returns non-zero if the wheel cannot be installed.
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
wheel=$(echo "$here"/moba_mlir-*.whl)
stem=$(basename "$wheel"); stem=${stem%%-py3-*}
site=$here/site
if [ ! -d "$site/$stem.dist-info" ]; then
  staging=$(mktemp -d "$here/site.XXXXXX") || return 1
  # pip where it works (PIP_ROOT_USER_ACTION: older pips ignore it, where
  # the flag would be an error), else the wheel unpacked: its root is the
  # installed layout.
  { PIP_ROOT_USER_ACTION=ignore python3 -m pip install --quiet --no-index \
      --no-deps --disable-pip-version-check --target "$staging" "$wheel" \
      2>/dev/null ||
    { rm -rf "$staging" && mkdir "$staging" &&
      python3 -m zipfile -e "$wheel" "$staging"; }
  } || { echo "setup.sh: cannot install $wheel" >&2; rm -rf "$staging"
         return 1; }
  rm -rf "$site" && mv "$staging" "$site" || return 1
fi
export PYTHONPATH="$site:$here${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
SETUP
cat > "$out/run.sh" <<'RUN'
#!/usr/bin/env bash
# Installs the wheel once, then runs gpu_check.py with the given arguments.
set -euo pipefail
source "$(dirname "$0")/setup.sh" || exit
exec python3 "$here/gpu_check.py" "$@"
RUN
# python.sh: any script (nan_check.py, say) with the package installed.
cat > "$out/python.sh" <<'PY'
#!/usr/bin/env bash
# usage: python.sh [python args]; python3 with the moba wheel installed.
set -euo pipefail
source "$(dirname "$0")/setup.sh" || exit
exec python3 "$@"
PY
# bench.sh and tune.sh: the same environment for bench/moba_bench.py and
# bench/tune.py.
for tool in bench:moba_bench tune:tune; do
  sed -e "s|gpu_check.py|${tool#*:}.py|" \
      -e "s|runs gpu_check.py|runs ${tool#*:}.py|" "$out/run.sh" \
      > "$out/${tool%%:*}.sh"
done
sed -i 's|exec python3|export MOBA_PEERS="$here/peers"\nexec python3|' \
  "$out/bench.sh"
# run.sh's modes of test/device/torch_check.py (after bench.sh and tune.sh
# were made from the plain run.sh above).
cat > "$out/run.sh" <<'RUN'
#!/usr/bin/env bash
# Installs the wheel once, then runs gpu_check.py with the given arguments
# (torch_check.py for its modes: graphs, hf).
set -euo pipefail
source "$(dirname "$0")/setup.sh" || exit
case "${1:-}" in
  graphs|hf) exec python3 "$here/torch_check.py" "$@" ;;
esac
exec python3 "$here/gpu_check.py" "$@"
RUN
# pytest.sh: python/tests/test_torch_ops.py on the device's torch (pytest
# must be installed there).
cat > "$out/pytest.sh" <<'PYTEST'
#!/usr/bin/env bash
# usage: pytest.sh [pytest args]; runs tests/test_torch_ops.py.
set -euo pipefail
source "$(dirname "$0")/setup.sh" || exit
export PYTHONPATH="$PYTHONPATH:$here/tests"
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
source "$(dirname "$0")/setup.sh" || exit
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
