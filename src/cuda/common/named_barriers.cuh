// Every named (hardware) barrier id a CUDA kernel of this library uses, and the only place where
// bar.sync / bar.arrive are written. Id 0 is __syncthreads; the others are partial barriers
// between warpgroups of a warp-specialized kernel.
#pragma once

#include <cstdint>

namespace sparge::cuda {

enum class NamedBarrier : uint32_t {
  kSyncThreads = 0,  // reserved: __syncthreads
  // Ping-pong of the two consumer warpgroups of attn_fwd_sm90_ws: consumer c waits on
  // kMmaTurnConsumer0 + c before it issues its GEMMs and then hands the turn to the other.
  kMmaTurnConsumer0 = 1,
  kMmaTurnConsumer1 = 2,
  // The λ vote of attn_fwd_sm90_ws: consumer c's four warps find out, on kPvVoteConsumer0 + c,
  // whether all of them skip every block of a turn, so that the warpgroup leaves out its P·V.
  kPvVoteConsumer0 = 3,
  kPvVoteConsumer1 = 4,
  // The epilogue of attn_fwd_sm90_ws: consumer c's four warps have staged their rows of O in
  // shared memory (kOutputStagedConsumer0 + c) before one thread stores the tile with the TMA.
  kOutputStagedConsumer0 = 5,
  kOutputStagedConsumer1 = 6,
};

__device__ __forceinline__ NamedBarrier mma_turn_barrier(int consumer) {
  return static_cast<NamedBarrier>(static_cast<uint32_t>(NamedBarrier::kMmaTurnConsumer0) + consumer);
}
__device__ __forceinline__ NamedBarrier pv_vote_barrier(int consumer) {
  return static_cast<NamedBarrier>(static_cast<uint32_t>(NamedBarrier::kPvVoteConsumer0) + consumer);
}

__device__ __forceinline__ NamedBarrier output_staged_barrier(int consumer) {
  return static_cast<NamedBarrier>(static_cast<uint32_t>(NamedBarrier::kOutputStagedConsumer0) + consumer);
}

// Blocks until `threads` threads (a multiple of 32, counting the arrivals) reached barrier `id`.
__device__ __forceinline__ void named_barrier_sync(NamedBarrier id, int threads) {
  asm volatile("bar.sync %0, %1;\n" ::"r"(static_cast<uint32_t>(id)), "r"(threads) : "memory");
}
// bar.sync that also returns whether every one of the `threads` threads passed `vote` = true.
__device__ __forceinline__ bool named_barrier_all(NamedBarrier id, int threads, bool vote) {
  uint32_t all;
  asm volatile(
      "{\n .reg .pred p, q;\n setp.ne.u32 p, %1, 0;\n bar.red.and.pred q, %2, %3, p;\n"
      " selp.u32 %0, 1, 0, q;\n}\n"
      : "=r"(all)
      : "r"(static_cast<uint32_t>(vote)), "r"(static_cast<uint32_t>(id)), "r"(threads)
      : "memory");
  return all != 0;
}
// Counts this warp towards barrier `id` without waiting.
__device__ __forceinline__ void named_barrier_arrive(NamedBarrier id, int threads) {
  asm volatile("bar.arrive %0, %1;\n" ::"r"(static_cast<uint32_t>(id)), "r"(threads) : "memory");
}

}  // namespace sparge::cuda
