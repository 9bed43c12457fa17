// `sparge mask`: predicts the block mask of one (batch, head) of a workload and draws it, one
// square of pixels per tile: white = computed, black = skipped, grey = causally excluded.
// With --compare, row-major order (left) and Hilbert order (right) side by side.
#include <algorithm>
#include <cstdio>
#include <string>
#include <vector>

#include "args.h"
#include "cli_common.h"
#include "commands.h"
#include "common/backend.h"
#include "common/geometry.h"
#include "image.h"
#include "sparge/sparge.h"

namespace sparge::cli {
namespace {

constexpr uint8_t kKept = 255, kSkipped = 0, kExcluded = 96, kGap = 160;

struct MaskPicture {
  std::vector<uint8_t> tiles;  // [nq][nk] pixel value per tile
  int64_t nq = 0, nk = 0;
  double sparsity = 0;
};

MaskPicture predict_picture(workloads::Workload w, bool hilbert, const SparseOptions& opts,
                            int64_t batch_index, int64_t head) {
  if (hilbert) apply_hilbert(w);
  HostBlockMask mask(w.batch, w.heads_q, w.seq_q, w.seq_k, opts.block_q, opts.block_k);
  check_ok(predict_block_mask(w.q_view(), w.k_view(), w.v_view(), opts, mask.view()), "predict_block_mask");
  const BlockMask& m = mask.view();
  MaskPicture pic;
  pic.nq = m.num_q_blocks();
  pic.nk = m.num_k_blocks();
  pic.tiles.assign(static_cast<size_t>(pic.nq * pic.nk), kSkipped);
  const detail::KeyBand band = detail::Problem::band_of(opts, w.seq_q, w.seq_k);
  int64_t allowed_total = 0, kept_total = 0;
  for (int64_t i = 0; i < pic.nq; ++i) {
    const detail::BlockRange allowed =
        detail::allowed_key_blocks(i, opts.block_q, opts.block_k, band, w.seq_q, w.seq_k);
    for (int64_t j = 0; j < pic.nk; ++j)
      if (!allowed.contains(j)) pic.tiles[i * pic.nk + j] = kExcluded;
    const int64_t row = m.row(batch_index, head, i);
    for (int32_t t = 0; t < m.counts[row]; ++t)
      pic.tiles[i * pic.nk + m.indices[row * pic.nk + t]] = kKept;
    allowed_total += allowed.size();
    kept_total += m.counts[row];
  }
  pic.sparsity = allowed_total ? 1.0 - double(kept_total) / double(allowed_total) : 0.0;
  return pic;
}

// Draws the pictures left to right, `scale` pixels per tile, separated by a grey column.
GrayImage compose(const std::vector<MaskPicture>& pics, int64_t scale) {
  GrayImage img;
  for (const MaskPicture& p : pics) {
    img.width += p.nk * scale + (img.width ? scale : 0);
    img.height = std::max(img.height, p.nq * scale);
  }
  img.pixels.assign(static_cast<size_t>(img.width * img.height), kGap);
  int64_t x0 = 0;
  for (const MaskPicture& p : pics) {
    for (int64_t y = 0; y < p.nq * scale; ++y)
      for (int64_t x = 0; x < p.nk * scale; ++x)
        img.pixels[y * img.width + x0 + x] = p.tiles[(y / scale) * p.nk + x / scale];
    x0 += p.nk * scale + scale;
  }
  return img;
}

}  // namespace

int run_mask(int argc, char** argv) {
  ArgParser p("sparge mask",
              "Predicts the block mask of one head of a workload (Stage 1 only) and writes it\n"
              "as a picture: one square per (query block, key block) tile, white = computed,\n"
              "black = skipped, grey = excluded by causality. PNG when built with libpng.");
  add_workload_options(p, "8,24,32", "4096");
  add_sparse_options(p);
  p.add("head", "H", "0", "query head to draw");
  p.add("batch-index", "B", "0", "batch entry to draw");
  p.add("out", "PATH", png_supported() ? "sparge_mask.png" : "sparge_mask.pgm", "output file");
  p.add("scale", "PX", "4", "pixels per tile side");
  p.add_flag("pgm", "write binary PGM instead of PNG");
  p.add_flag("compare", "video: row-major (left) and Hilbert order (right) side by side");
  p.add_flag("no-hilbert", "keep video tokens in row-major order");
  if (!p.parse(argc, argv, 2)) {
    std::printf("%s", p.help().c_str());
    return 0;
  }
  workloads::Workload w = make_workload(p);
  const SparseOptions opts = sparse_options(p, w.causal);
  const int64_t head = p.integer("head", 0, w.heads_q - 1);
  const int64_t batch_index = p.integer("batch-index", 0, w.batch - 1);
  const int64_t scale = p.integer("scale", 1, 64);
  const std::string out = p.str("out");
  const bool png = !p.flag("pgm") && !(out.size() >= 4 && out.substr(out.size() - 4) == ".pgm");
  if (png && !png_supported())
    throw UsageError("--out '" + out + "' asks for PNG but this build has no libpng; use --pgm");
  if (p.flag("compare") && w.grid_t == 0)
    throw UsageError("--compare needs --workload video (only grid workloads have a Hilbert order)");

  std::vector<MaskPicture> pics;
  std::vector<std::string> labels;
  if (p.flag("compare")) {
    pics.push_back(predict_picture(w, false, opts, batch_index, head));
    labels.push_back("row-major");
  }
  const bool hilbert = w.grid_t > 0 && (p.flag("compare") || !p.flag("no-hilbert"));
  pics.push_back(predict_picture(w, hilbert, opts, batch_index, head));
  labels.push_back(hilbert ? "Hilbert" : (w.grid_t ? "row-major" : "sequence"));

  const GrayImage img = compose(pics, scale);
  write_image(img, out, png);
  std::printf("wrote %s (%lld x %lld px, %s): %s, head %lld, %lld x %lld tiles\n", out.c_str(),
              static_cast<long long>(img.width), static_cast<long long>(img.height),
              png ? "PNG" : "PGM", shape_text(w).c_str(), static_cast<long long>(head),
              static_cast<long long>(pics.back().nq), static_cast<long long>(pics.back().nk));
  for (size_t i = 0; i < pics.size(); ++i)
    std::printf("  %-10s sparsity %.3f\n", labels[i].c_str(), pics[i].sparsity);
  return 0;
}

}  // namespace sparge::cli
