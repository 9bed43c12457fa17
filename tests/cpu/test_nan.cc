// NaN / Inf in q, k or v propagate as in PyTorch's SDPA (docs/method.md "Inputs with NaN/Inf")
// on both CPU backends, with a given mask and through Stage 1 + 2: the cases of nan_cases.h.
#include <gtest/gtest.h>

#include <limits>
#include <vector>

#include "nan_cases.h"
#include "sparge/sparge.h"
#include "test_util.h"

namespace sparge::test::nan {
namespace {

Runner cpu_runner(Backend backend) {
  return [backend](const Problem& p, const HostBlockMask* mask) {
    Outcome out;
    const HostTensor q = HostTensor::make(p.q, p.B, p.Hq, p.Nq, p.D, DType::kFloat32, Layout::kHND);
    const HostTensor k =
        HostTensor::make(p.k, p.B, p.Hkv, p.Nk, p.D, DType::kFloat32, Layout::kHND);
    const HostTensor v =
        HostTensor::make(p.v, p.B, p.Hkv, p.Nk, p.D, DType::kFloat32, Layout::kHND);
    HostTensor o = HostTensor::poisoned(p.B, p.Hq, p.Nq, p.D, DType::kFloat32, Layout::kHND);
    out.lse.assign(p.B * p.Hq * p.Nq, std::numeric_limits<float>::quiet_NaN());
    AttentionExtras extras;
    extras.lse = out.lse.data();
    ExecContext ctx;
    ctx.backend = backend;
    if (mask != nullptr) {
      out.mask = *mask;
      out.status =
          block_sparse_attention(q.view, k.view, v.view, mask->view(), p.opts, o.view, extras, ctx);
    } else {
      out.mask = HostBlockMask(p.B, p.Hq, p.Nq, p.Nk, p.opts.block_q, p.opts.block_k);
      out.status =
          sparse_attention(q.view, k.view, v.view, p.opts, o.view, extras, ctx, &out.mask.view());
    }
    out.o = o.to_hnd();
    return out;
  };
}

class NanPropagation : public ::testing::TestWithParam<Backend> {};

TEST_P(NanPropagation, QRowGivesThatRowNaN) { q_row_cases(cpu_runner(GetParam())); }
TEST_P(NanPropagation, KRowGivesTheRowsThatSeeItNaN) { k_row_cases(cpu_runner(GetParam())); }
TEST_P(NanPropagation, VRowGivesOneNaNChannel) { v_row_cases(cpu_runner(GetParam())); }
TEST_P(NanPropagation, RowsWithoutKeysStayZero) { keyless_row_cases(cpu_runner(GetParam())); }
TEST_P(NanPropagation, PredictedMaskKeepsNaNBlocks) { predicted_cases(cpu_runner(GetParam())); }

INSTANTIATE_TEST_SUITE_P(Cpu, NanPropagation,
                         ::testing::Values(Backend::kReference, Backend::kCpuFast),
                         [](const ::testing::TestParamInfo<Backend>& info) {
                           return info.param == Backend::kReference ? "reference" : "fast";
                         });

}  // namespace
}  // namespace sparge::test::nan
