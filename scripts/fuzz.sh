#!/usr/bin/env bash
# Runs the fuzzers of test/fuzz for a given time (docs/fuzzing.md): moba-opt
# on mutated lit inputs through every pipeline (60% of the time), the Python
# and C API (25%), and moba-run's command line (15%), each with two jobs.
# Prints each fuzzer's counts and findings; exits non-zero when one found
# something. Findings are kept under the output directory.
#
#   scripts/fuzz.sh [--minutes 30] [--seed N] [--build build] [--out DIR]
#                   [--jobs 2] [--minimize SECONDS]
#
# The seed defaults to one drawn from the clock, printed first: the same
# seed, time split and machine speed give the same cases (each case is a
# function of the seed and its index), and `--only INDEX` / `--show INDEX`
# of each fuzzer replays one.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
minutes=30
seed=$(( $(date +%s) % 100000 ))
build=$root/build
out=
jobs=2
minimize=0
while (($#)); do
  case "$1" in
    --minutes) minutes=$2; shift 2 ;;
    --seed) seed=$2; shift 2 ;;
    --build) build=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    --jobs) jobs=$2; shift 2 ;;
    --minimize) minimize=$2; shift 2 ;;
    -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
    *) echo "fuzz.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
build=$(cd "$build" && pwd)
out=${out:-${TMPDIR:-/tmp}/moba-fuzz-$seed}
mkdir -p "$out"
python=/usr/bin/python3  # Debian's, with numpy (the API fuzzer needs it)

split() { awk -v m="$minutes" -v f="$1" 'BEGIN { printf "%.2f", m * f }'; }
echo "fuzz.sh: seed $seed, $minutes minutes, $jobs jobs, findings under $out"
echo "fuzz.sh: $(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo '?')," \
  "$(date -u +%Y-%m-%dT%H:%MZ)"

status=0
"$python" "$root/test/fuzz/ir_fuzz.py" --moba-opt "$build/bin/moba-opt" \
  --root "$root" --seed "$seed" --minutes "$(split 0.60)" --jobs "$jobs" \
  --out "$out/ir" --minimize "$minimize" || status=1
PYTHONPATH="$build/python${PYTHONPATH:+:$PYTHONPATH}" \
  "$python" "$root/test/fuzz/api_fuzz.py" --seed "$seed" \
  --minutes "$(split 0.25)" --jobs "$jobs" --out "$out/api" || status=1
"$python" "$root/test/fuzz/tool_fuzz.py" --moba-run "$build/bin/moba-run" \
  --seed "$seed" --minutes "$(split 0.15)" --jobs "$jobs" \
  --out "$out/moba-run" || status=1

if ((status)); then
  echo "fuzz.sh: findings under $out (docs/fuzzing.md: triage)"
else
  echo "fuzz.sh: nothing found (seed $seed, $minutes minutes)"
fi
exit "$status"
