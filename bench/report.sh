#!/usr/bin/env bash
# Sparge's evaluation report in one command: installs the package (unless told not to), then runs
# bench/eval/report.py, which writes bench/results/<yyyy-mm-dd>_<device>_report/ (report.jsonl,
# README.md, PNG plots). See docs/results.md.
#
#   bash bench/report.sh                 # on the GPU machine (offline): 8K-128K tokens
#   bash bench/report.sh --cpu           # the small version on a CPU machine (< 2 min on 2 cores)
#   bash bench/report.sh --cpu --out DIR # anywhere else (CI writes to a temporary directory)
# Other options go to report.py (--workloads, --budget, --real, --flex, --grid, ...).
#
#   PYTHON               the interpreter (default: .venv/bin/python with --cpu when it exists,
#                        else python3)
#   SPARGE_SKIP_INSTALL  1: use the sparge already installed (also: --no-install)
#   OUT                  when set (the device machine), the log and a copy of the report go there
#   SPARGE_COMMIT        the commit to record, where the tree is a copy without .git
set -uo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
cpu=0
install=1
[ "${SPARGE_SKIP_INSTALL:-0}" = 1 ] && install=0
args=()
for arg in "$@"; do
  case "$arg" in
    --cpu) cpu=1; args+=("$arg") ;;
    --no-install) install=0 ;;
    *) args+=("$arg") ;;
  esac
done
if [ -z "${PYTHON:-}" ]; then
  PYTHON=python3
  [ "$cpu" = 1 ] && [ -x "$root/.venv/bin/python" ] && PYTHON="$root/.venv/bin/python"
fi
log="${OUT:+$OUT/report.log}"
log="${log:-/dev/null}"
[ -n "${OUT:-}" ] && mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_VERBOSITY=error
start=$(date +%s)

if [ "$install" = 1 ]; then
  install_log="${OUT:-${TMPDIR:-/tmp}}/report-install.log"
  if [ "$cpu" = 1 ]; then
    echo "== pip install . (CPU only)"
    SPARGE_WITH_CUDA=0 MAX_JOBS="${MAX_JOBS:-$(nproc)}" \
      "$PYTHON" -m pip install -q --no-deps --disable-pip-version-check . >"$install_log" 2>&1
  else
    # As tests/python/run_device.sh: the system g++ (the image's $CXX links libstdc++
    # statically, and the extension then crashes at its first ostream << int).
    echo "== pip install . (CUDA, TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0a})"
    CXX=/usr/bin/g++ CC=/usr/bin/gcc SPARGE_WITH_CUDA=1 \
      TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0a}" MAX_JOBS="${MAX_JOBS:-$(nproc)}" \
      "$PYTHON" -m pip install -q --no-deps --disable-pip-version-check . >"$install_log" 2>&1
  fi || { tail -40 "$install_log"; echo "error: pip install . failed (log: $install_log)"; exit 1; }
  echo "== installed in $(($(date +%s) - start)) s"
fi

set +e
"$PYTHON" bench/eval/report.py "${args[@]}" --command "bash bench/report.sh $*" 2>&1 \
  | grep --line-buffered -v -e "Converting and de-quantizing GGUF" | tee "$log"
rc=${PIPESTATUS[0]}
set -e
if [ -n "${OUT:-}" ] && [ "$rc" = 0 ]; then
  report_dir="$(sed -n 's/.*report written to \(.*\) in [0-9]* s$/\1/p' "$log" | tail -1)"
  [ -d "$report_dir" ] && cp -r "$report_dir" "$OUT/"
fi
echo "== bench/report.sh finished in $(($(date +%s) - start)) s (exit code $rc)"
exit "$rc"
