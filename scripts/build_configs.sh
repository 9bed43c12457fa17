# shellcheck shell=bash
# The CMake configurations of the README's commands, sourced by scripts/demo.sh, scripts/test.sh
# and tests/scripts/test_build_order.sh. demo.sh and test.sh share build/cpu, so each names every
# option it relies on: a value the other one cached (demo's SPARGE_BUILD_TESTS=OFF) must not leak
# in, or test.sh's ctest finds no tests.
# shellcheck disable=SC2034  # used by the scripts that source this file
demo_cpu_config=(-DSPARGE_WITH_CUDA=OFF -DSPARGE_BUILD_TOOLS=ON -DSPARGE_BUILD_TESTS=OFF)
test_cpu_config=(-DSPARGE_WITH_CUDA=OFF -DSPARGE_BUILD_TOOLS=ON -DSPARGE_BUILD_TESTS=ON
                 -DSPARGE_BUILD_BENCH=ON)
test_cuda_config=(-DSPARGE_WITH_CUDA=ON -DSPARGE_BUILD_TOOLS=ON -DSPARGE_BUILD_TESTS=ON
                  -DSPARGE_BUILD_BENCH=OFF)
# scripts/sanitize.sh: the CPU library and tests under ASan + UBSan (g++), and the libFuzzer
# targets of fuzz/ (clang; SPARGE_BUILD_FUZZ requires it).
asan_cpu_config=(-DSPARGE_WITH_CUDA=OFF -DSPARGE_BUILD_TOOLS=ON -DSPARGE_BUILD_TESTS=ON
                 -DSPARGE_BUILD_BENCH=OFF
                 "-DCMAKE_CXX_FLAGS=-fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer -g"
                 "-DCMAKE_EXE_LINKER_FLAGS=-fsanitize=address,undefined")
fuzz_config=(-DSPARGE_WITH_CUDA=OFF -DSPARGE_BUILD_TOOLS=OFF -DSPARGE_BUILD_TESTS=OFF
             -DSPARGE_BUILD_BENCH=OFF -DSPARGE_BUILD_FUZZ=ON -DCMAKE_CXX_COMPILER=clang++)
