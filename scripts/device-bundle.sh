#!/usr/bin/env bash
# device-bundle: packs what the GPU machine runs into .device/ (git-ignored),
# for the device tool to carry: the moba Python package with libMobaC.so
# (self-contained: MLIR and LLVM linked in) compressed, since it is larger
# than one call may carry, and the check script. Nothing is built there.
#
#   bash scripts/device-bundle.sh            # after scripts/build.sh
#   on the device: bash .device/run.sh MODE   # see test/device/gpu_check.py
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build=${MOBA_BUILD_DIR:-$root/build}
out=$root/.device
rm -rf "$out" && mkdir -p "$out/moba"
cp "$build"/python/moba/*.py "$out/moba/"
gzip -9 -c "$build/python/moba/libMobaC.so" > "$out/moba/libMobaC.so.gz"
cp "$root/test/device/gpu_check.py" "$root/test/device/nan_check.py" \
   "$root/python/tests/reference.py" "$root"/bench/*.py "$out/"
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
chmod +x "$out"/*.sh
du -sh "$out"
