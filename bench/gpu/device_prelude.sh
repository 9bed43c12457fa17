# Sourced (from the repo root, on the device) by the device-run scripts that take a commit id:
# C (their first argument), OUT (the folder that comes back), el (a line with the seconds since
# the start), the binaries of .devpack/bins.tgz unpacked in /tmp/bins, the system compilers
# (the image's /opt/gcc links libstdc++ statically: extensions built with it crash at import),
# run_decode_benches, and install_package_in_background, which builds and installs the Python package
# (`pip install .`, sm_90a, ~90-110 s) or, with a wheel path, installs that wheel; PIP is its pid
# and /tmp/install.log its last line says how it went.
set -uo pipefail
C=${1:?commit}
OUT=${OUT:-/tmp/sparge_out}; mkdir -p "$OUT"
T0=$(date +%s)
el() { echo "[t+$(( $(date +%s) - T0 ))s] $*"; }
mkdir -p /tmp/bins && tar xf .devpack/bins.tgz -C /tmp/bins || { echo "no .devpack/bins.tgz"; exit 1; }
export CXX=/usr/bin/g++ CC=/usr/bin/gcc HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1

# bench_decode.py once per argument (a quoted set of its options; "" = its defaults: B 8), each
# record in $OUT/decode_$C.jsonl and its table in $OUT/decode_$C.log, which is printed last.
run_decode_benches() {
  local i=0 extra
  for extra in "$@"; do
    i=$((i + 1))
    # shellcheck disable=SC2086  # each argument is a set of options
    timeout 90 python3 bench/gpu/bench_decode.py --commit "$C" --reps 10 $extra \
      --out "/tmp/decode_$i.jsonl" 2>&1 | grep -v '^{' >> "$OUT/decode_$C.log"
    el "decode ${extra:-B 8} rc=${PIPESTATUS[0]}"
  done
  cat /tmp/decode_*.jsonl > "$OUT/decode_$C.jsonl" 2>/dev/null
  cat "$OUT/decode_$C.log"
}

install_package_in_background() {
  local wheel=${1:-}
  if [ -n "$wheel" ]; then
    ( local s rc; s=$(date +%s)
      python3 -m pip install -q --no-deps --disable-pip-version-check "$wheel" > /tmp/install.log 2>&1
      rc=$?  # before any command substitution below resets $?
      echo "wheel $(basename "$wheel") install rc=$rc in $(( $(date +%s) - s )) s" >> /tmp/install.log ) &
  else
    ( rm -rf python/build
      SPARGE_WITH_CUDA=1 TORCH_CUDA_ARCH_LIST=9.0a MAX_JOBS=12 \
        python3 -m pip install -q --no-deps --disable-pip-version-check . > /tmp/install.log 2>&1
      local rc=$?
      echo "install rc=$rc at $(( $(date +%s) - T0 ))s" >> /tmp/install.log ) &
  fi
  PIP=$!
}
