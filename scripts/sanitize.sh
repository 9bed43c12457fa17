#!/usr/bin/env bash
# Hostile-input checks (docs/fuzzing.md), the last stage of scripts/test.sh:
#   a. the CPU library, the CLI and the CPU tests built with -fsanitize=address,undefined in
#      build/asan, and `ctest -L cpu` there: any ASan or UBSan report fails the run;
#   b. the libFuzzer targets of fuzz/ built with clang in build/fuzz, each run on its committed
#      corpus plus the inputs it finds; a crash, a sanitizer report, a leak or a timeout fails
#      the run. By default the run is reproducible: a fixed seed and a fixed number of
#      executions per target (about a minute each on the 2-core CI machine), so CI passes or
#      fails the same way on the same commit. SPARGE_FUZZ_SECONDS=N explores instead: a random
#      seed for N seconds per target (docs/fuzzing.md: long runs, and what to do with a finding).
# SPARGE_SANITIZE_STAGES=asan or =fuzz runs one half only.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
source "$root/scripts/build_configs.sh"
export SPARGE_TEST_LEVEL="${SPARGE_TEST_LEVEL:-1}"
stages="${SPARGE_SANITIZE_STAGES:-asan fuzz}"
seconds="${SPARGE_FUZZ_SECONDS:-}"
# Executions per target in the reproducible run: about 60 s each at the rates measured on the
# CI machine (docs/fuzzing.md). A clean clone starts from the committed corpus only, so the
# same seed walks the same inputs.
declare -A fuzz_runs=([fuzz_c_abi]=40000 [fuzz_block_mask]=70000 [fuzz_cli_args]=1000000)

# halt_on_error: the first report ends the process with a failing status. detect_leaks stays on:
# libgomp's thread pool is still reachable at exit, so LeakSanitizer does not report it.
export ASAN_OPTIONS="halt_on_error=1:abort_on_error=1:detect_leaks=1:strict_string_checks=1"
export UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1"

if [[ " $stages " == *" asan "* ]]; then
  echo "== ASan + UBSan build of the CPU library and tests (build/asan)"
  bash "$root/scripts/build.sh" "$root/build/asan" "${asan_cpu_config[@]}"
  (cd "$root/build/asan" && ctest --output-on-failure --no-tests=error -j2 -L cpu)
fi

if [[ " $stages " == *" fuzz "* ]]; then
  if ! command -v clang++ >/dev/null; then
    echo "error: the fuzz targets need clang++ (Debian: clang, libclang-rt-dev, libomp-dev)" >&2
    exit 1
  fi
  if [[ -n "$seconds" ]]; then
    echo "== libFuzzer targets (build/fuzz): exploring, random seed, ${seconds} s each"
  else
    echo "== libFuzzer targets (build/fuzz): reproducible run, seed 1, a fixed count each"
  fi
  bash "$root/scripts/build.sh" "$root/build/fuzz" "${fuzz_config[@]}"
  # One OpenMP thread: the inputs are tiny, and libFuzzer measures one thread's coverage.
  export OMP_NUM_THREADS=1
  for target in fuzz_c_abi fuzz_block_mask fuzz_cli_args; do
    # New inputs go to a scratch folder first, so the committed corpus only changes by hand.
    # The reproducible run starts that folder empty: inputs an earlier run found would change
    # the walk.
    work="$root/build/fuzz/corpus/$target"
    if [[ -n "$seconds" ]]; then
      budget=(-max_total_time="$seconds")
    else
      rm -rf "$work"
      budget=(-seed=1 -runs="${fuzz_runs[$target]}")
    fi
    mkdir -p "$work" "$root/build/fuzz/artifacts"
    echo "-- $target"
    log="$root/build/fuzz/$target.log"
    if ! "$root/build/fuzz/fuzz/$target" "${budget[@]}" -timeout=10 \
         -rss_limit_mb=2048 -print_final_stats=1 \
         -artifact_prefix="$root/build/fuzz/artifacts/$target-" \
         "$work" "$root/fuzz/corpus/$target" >"$log" 2>&1; then
      tail -n 60 "$log"
      echo "error: $target found a failing input (above; saved under build/fuzz/artifacts)" >&2
      exit 1
    fi
    grep -E '^(Done|stat::number_of_executed_units|stat::peak_rss_mb)' "$log" || tail -n 5 "$log"
  done
fi
