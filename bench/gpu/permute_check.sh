#!/usr/bin/env bash
# One H200 call for the token reordering (issue 10): the C++ GPU tests of permute_tokens (a fast
# sm_90a build), the Python package with CUDA, bench_permute.py (the library's gathers against
# torch's index_select, one process), with WHOLE_CALL=1 bench_whole_call.py (the whole call on a
# 32K video-like input in Hilbert order and its parts), and the Python tests that reorder tokens
# on the GPU.
# Usage (repo root, device call with carry .devdeps): bash bench/gpu/permute_check.sh <commit name>
# Records and logs go to $OUT.
set -uo pipefail
name=${1:?commit name}
out=${OUT:-/tmp/sparge_out}; mkdir -p "$out"
extra=()
if [ ! -d /usr/include/gtest ] && [ -d .devdeps/usr ]; then extra+=(-DCMAKE_PREFIX_PATH="$PWD/.devdeps/usr"); fi
gen=(); command -v ninja >/dev/null && gen=(-G Ninja)
cmake -S . -B build-perm "${gen[@]}" -DSPARGE_WITH_CUDA=ON -DSPARGE_FAST_BUILD=ON -DSPARGE_BUILD_BENCH=OFF \
  -DSPARGE_BUILD_TOOLS=OFF "${extra[@]}" >"$out/build.log" 2>&1 &&
  cmake --build build-perm -j"$(nproc)" --target sparge_gpu_tests >>"$out/build.log" 2>&1
echo "build rc=$? ($SECONDS s)"
./build-perm/tests/sparge_gpu_tests --gtest_filter='PermuteTokens.*' >"$out/gpu_tests.log" 2>&1
echo "gpu tests rc=$? ($SECONDS s): $(grep -E '^\[  (PASSED|FAILED) ' "$out/gpu_tests.log" | tr '\n' ' ')"
# The image's /opt/gcc links libstdc++ statically (tests/python/run_device.sh says why not).
export CXX=/usr/bin/g++ CC=/usr/bin/gcc PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
rm -rf python/build
SPARGE_WITH_CUDA=1 TORCH_CUDA_ARCH_LIST=9.0a MAX_JOBS="$(nproc)" \
  python3 -m pip install -q --no-deps --disable-pip-version-check . >"$out/install.log" 2>&1
echo "pip install rc=$? ($SECONDS s)"
(cd /tmp && python3 "$OLDPWD/bench/gpu/bench_permute.py" --commit "$name" --out-dir "$out") 2>&1 | tee "$out/bench_permute.log"
if [ "${WHOLE_CALL:-0}" = 1 ]; then
  (cd /tmp && python3 "$OLDPWD/bench/gpu/bench_whole_call.py" --commit "$name" --out-dir "$out") 2>&1 | tee "$out/bench_whole_call.log"
fi
(cd tests/python && timeout 400 python3 -m pytest -q -p no:cacheprovider -x test_cuda.py test_attention.py \
  test_attn_mask.py test_compile.py 2>&1 | tail -4)
echo "done ($SECONDS s)"
