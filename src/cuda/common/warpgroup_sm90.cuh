// Register reallocation between the warpgroups of a warp-specialized sm_90a kernel: a producer
// gives registers back (setmaxnreg.dec) so that consumers can take more (setmaxnreg.inc). Every
// thread of the warpgroup executes the instruction; the count is a multiple of 8 in [24, 256].
#pragma once

namespace sparge::cuda {

// Four warps issue one wgmma together (a warpgroup).
constexpr int kWarpgroupThreads = 128;

template <int kRegs>
__device__ __forceinline__ void warpgroup_reg_dealloc() {
  static_assert(kRegs % 8 == 0 && kRegs >= 24 && kRegs <= 256, "setmaxnreg range");
  asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;\n" ::"n"(kRegs));
}
template <int kRegs>
__device__ __forceinline__ void warpgroup_reg_alloc() {
  static_assert(kRegs % 8 == 0 && kRegs >= 24 && kRegs <= 256, "setmaxnreg range");
  asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;\n" ::"n"(kRegs));
}

}  // namespace sparge::cuda
