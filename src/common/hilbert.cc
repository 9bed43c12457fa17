// Generalized 3-D Hilbert ordering of a (T, H, W) token grid, for any sizes >= 1.
//
// A box is walked from its origin corner to the far end of its "major" axis a, i.e. from local
// (0, 0, 0) to (w - 1, 0, 0); b and c are its other two axes (lengths h and d). The walk is
// built recursively, Hilbert style, by cutting the box into 2, 3 or 5 sub-boxes that are walked
// the same way, each sub-box starting next to where the previous one ended:
//   halves : two boxes side by side along a                        (long, thin boxes)
//   U      : up b in the near-a part, across a in the far-b slab, back down b (c not split)
//   five   : the 3-D step: near quadrant, far-b column, far-c slab across a, far-b column
//            back, near quadrant back (splits a, b and c)
// Such a corner-to-corner walk can only exist when the parities allow it: the grid is
// bipartite, so with an even cell count the two ends must have opposite colours (w even), and
// with an odd count (w, h, d all odd) any w works; w must also be >= 2 unless the box is one
// cell. Split points are chosen near the middle among those whose sub-boxes can all be walked
// (found by a memoized search), so every step of the final order moves to a grid neighbour.
// At the top level the major axis is free; if no axis admits a plan, a serpentine order
// (always neighbour to neighbour, less local) is used instead. Either way consecutive tokens
// are grid neighbours for every size. The fallback was never reached for any grid with all
// sides <= 16 nor for the larger grids of tests/cpu/test_hilbert.cc (checked while writing
// this file with a build that aborted on it).
#include <algorithm>
#include <array>
#include <cstdint>
#include <cstdlib>
#include <map>
#include <optional>
#include <vector>

#include "sparge/sparge.h"

namespace sparge {
namespace {

enum class Cut : uint8_t { kLine, kHalves, kUSecond, kUThird, kFiveSecond, kFiveThird };

// How a box of lengths (w, h, d) along (a, b, c) is cut; split_* are the near parts' lengths.
struct Plan {
  Cut cut = Cut::kLine;
  int64_t split_a = 0, split_b = 0, split_c = 0;
};

using Dims = std::array<int64_t, 3>;  // lengths along the box's (major, second, third) axes

// One axis of a sub-box: which parent axis (0 = a, 1 = b, 2 = c), its direction and length.
struct AxisRef {
  int parent;
  int sign;
  int64_t length;
};

// A sub-box: local origin in parent coordinates plus its (major, second, third) axes.
struct Piece {
  std::array<int64_t, 3> origin;
  std::array<AxisRef, 3> axes;
};

// The sub-boxes of a cut, in walking order. Each starts at its origin and ends at
// origin + (major length - 1) * major direction, next to the following piece's origin.
std::vector<Piece> pieces_of(const Dims& n, const Plan& p) {
  const int64_t w = n[0], h = n[1], d = n[2];
  const int64_t w1 = p.split_a, w2 = w - p.split_a;
  switch (p.cut) {
    case Cut::kLine:
      return {};
    case Cut::kHalves:
      return {{{0, 0, 0}, {{{0, 1, w1}, {1, 1, h}, {2, 1, d}}}},
              {{w1, 0, 0}, {{{0, 1, w2}, {1, 1, h}, {2, 1, d}}}}};
    case Cut::kUSecond:
    case Cut::kUThird: {
      // "s" is the axis the U climbs (b or c), "t" the one left whole.
      const bool second = p.cut == Cut::kUSecond;
      const int s = second ? 1 : 2, t = second ? 2 : 1;
      const int64_t ls = n[s], lt = n[t], s1 = second ? p.split_b : p.split_c;
      std::array<int64_t, 3> far_origin{0, 0, 0}, back_origin{w - 1, 0, 0};
      far_origin[s] = s1;
      back_origin[s] = s1 - 1;
      Piece up{{0, 0, 0}, {{{s, 1, s1}, {0, 1, w1}, {t, 1, lt}}}};
      Piece across{far_origin, {{{0, 1, w}, {s, 1, ls - s1}, {t, 1, lt}}}};
      Piece down{back_origin, {{{s, -1, s1}, {0, -1, w2}, {t, 1, lt}}}};
      return {up, across, down};
    }
    case Cut::kFiveSecond:
    case Cut::kFiveThird: {
      // Columns run along "s" (b for kFiveSecond), the slab sits at the far end of "t".
      const bool second = p.cut == Cut::kFiveSecond;
      const int s = second ? 1 : 2, t = second ? 2 : 1;
      const int64_t ls = n[s], lt = n[t];
      const int64_t s1 = second ? p.split_b : p.split_c, t1 = second ? p.split_c : p.split_b;
      auto at = [&](int64_t a, int64_t sv, int64_t tv) {
        std::array<int64_t, 3> o{a, 0, 0};
        o[s] = sv;
        o[t] = tv;
        return o;
      };
      return {{at(0, 0, 0), {{{s, 1, s1}, {t, 1, t1}, {0, 1, w1}}}},
              {at(0, s1, 0), {{{t, 1, lt}, {0, 1, w1}, {s, 1, ls - s1}}}},
              {at(0, s1 - 1, lt - 1), {{{0, 1, w}, {s, -1, s1}, {t, -1, lt - t1}}}},
              {at(w - 1, s1, lt - 1), {{{t, -1, lt}, {0, -1, w2}, {s, 1, ls - s1}}}},
              {at(w - 1, s1 - 1, 0), {{{s, -1, s1}, {t, 1, t1}, {0, -1, w2}}}}};
    }
  }
  return {};
}

// Necessary condition for a walk from (0,0,0) to (w-1,0,0) (see the file comment).
bool parity_allows(const Dims& n) {
  const int64_t cells = n[0] * n[1] * n[2];
  if (cells == 1) return true;
  if (n[0] < 2) return false;
  return n[0] % 2 == 0 || cells % 2 == 1;
}

// Split lengths near n/2, closest first (even first on ties), each leaving both parts >= 1.
std::vector<int64_t> split_candidates(int64_t n) {
  std::vector<int64_t> out;
  const int64_t half = n / 2;
  for (int64_t delta = 0; delta <= 3; ++delta)
    for (int64_t cand : {half + delta, half - delta}) {
      if (cand < 1 || cand > n - 1) continue;
      if (std::find(out.begin(), out.end(), cand) == out.end()) out.push_back(cand);
    }
  std::stable_sort(out.begin(), out.end(), [half](int64_t x, int64_t y) {
    const int64_t dx = std::llabs(x - half), dy = std::llabs(y - half);
    if (dx != dy) return dx < dy;
    return (x % 2 == 0) && (y % 2 != 0);
  });
  return out;
}

class Planner {
 public:
  // The plan for a box, or nullopt when no walk of this construction exists.
  const std::optional<Plan>& plan(const Dims& n) {
    auto it = memo_.find(n);
    if (it != memo_.end()) return it->second;
    std::optional<Plan> found = search(n);
    return memo_.emplace(n, found).first->second;
  }

 private:
  bool walkable(const Dims& n, const Plan& p) {
    for (const Piece& piece : pieces_of(n, p)) {
      const Dims sub{piece.axes[0].length, piece.axes[1].length, piece.axes[2].length};
      if (!parity_allows(sub) || !plan(sub)) return false;
    }
    return true;
  }

  std::optional<Plan> search(const Dims& n) {
    const int64_t w = n[0], h = n[1], d = n[2];
    if (h == 1 && d == 1) return Plan{};
    if (!parity_allows(n)) return std::nullopt;
    // Cut order by shape, as Hilbert curves keep sub-boxes near-cubic: halve a long a first,
    // do not split an axis much shorter than the other one.
    std::vector<Cut> order;
    if (2 * w > 3 * std::max(h, d)) order.push_back(Cut::kHalves);
    if (3 * h > 4 * d) order.push_back(Cut::kUSecond);
    if (3 * d > 4 * h) order.push_back(Cut::kUThird);
    for (Cut c : {Cut::kFiveSecond, Cut::kFiveThird, Cut::kUSecond, Cut::kUThird, Cut::kHalves})
      if (std::find(order.begin(), order.end(), c) == order.end()) order.push_back(c);

    const std::vector<int64_t> one{0};
    for (Cut cut : order) {
      const bool split_b =
          cut == Cut::kUSecond || cut == Cut::kFiveSecond || cut == Cut::kFiveThird;
      const bool split_c = cut == Cut::kUThird || cut == Cut::kFiveSecond || cut == Cut::kFiveThird;
      if ((split_b && h < 2) || (split_c && d < 2) || w < 2) continue;
      const std::vector<int64_t> as = split_candidates(w);
      const std::vector<int64_t> bs = split_b ? split_candidates(h) : one;
      const std::vector<int64_t> cs = split_c ? split_candidates(d) : one;
      for (int64_t sa : as)
        for (int64_t sb : bs)
          for (int64_t sc : cs) {
            const Plan p{cut, sa, sb, sc};
            if (walkable(n, p)) return p;
          }
    }
    return std::nullopt;
  }

  std::map<Dims, std::optional<Plan>> memo_;
};

struct Frame {
  std::array<int64_t, 3> origin;              // grid coordinates (t, y, x)
  std::array<std::array<int64_t, 3>, 3> dir;  // grid step of the major, second, third axis
  Dims n;
};

void walk(Planner& planner, const Frame& f, const std::array<int64_t, 3>& grid,
          std::vector<int64_t>& out) {
  const Plan& p = *planner.plan(f.n);
  if (p.cut == Cut::kLine) {
    // h == d == 1: a straight run along the major axis.
    std::array<int64_t, 3> c = f.origin;
    for (int64_t i = 0; i < f.n[0]; ++i) {
      out.push_back((c[0] * grid[1] + c[1]) * grid[2] + c[2]);
      for (int k = 0; k < 3; ++k) c[k] += f.dir[0][k];
    }
    return;
  }
  for (const Piece& piece : pieces_of(f.n, p)) {
    Frame sub;
    for (int k = 0; k < 3; ++k) {
      sub.origin[k] = f.origin[k];
      for (int axis = 0; axis < 3; ++axis) sub.origin[k] += piece.origin[axis] * f.dir[axis][k];
    }
    for (int axis = 0; axis < 3; ++axis) {
      const AxisRef& r = piece.axes[axis];
      for (int k = 0; k < 3; ++k) sub.dir[axis][k] = r.sign * f.dir[r.parent][k];
      sub.n[axis] = r.length;
    }
    walk(planner, sub, grid, out);
  }
}

// Boustrophedon order: x runs back and forth, rows of a frame back and forth, frames in order.
std::vector<int64_t> serpentine_order(int64_t frames, int64_t height, int64_t width) {
  std::vector<int64_t> out;
  out.reserve(static_cast<size_t>(frames * height * width));
  for (int64_t t = 0; t < frames; ++t)
    for (int64_t yi = 0; yi < height; ++yi) {
      const int64_t y = t % 2 == 0 ? yi : height - 1 - yi;
      for (int64_t xi = 0; xi < width; ++xi) {
        const int64_t x = (t * height + yi) % 2 == 0 ? xi : width - 1 - xi;
        out.push_back((t * height + y) * width + x);
      }
    }
  return out;
}

}  // namespace

std::vector<int64_t> hilbert_order(int64_t frames, int64_t height, int64_t width) {
  if (frames < 1 || height < 1 || width < 1) return {};
  const std::array<int64_t, 3> grid{frames, height, width};
  // Try the longest grid axis as the major axis first (most cube-like sub-boxes).
  std::array<int, 3> axes{0, 1, 2};
  std::stable_sort(axes.begin(), axes.end(), [&](int x, int y) { return grid[x] > grid[y]; });
  Planner planner;
  for (int major : axes)
    for (int flip = 0; flip < 2; ++flip) {
      const int second = (major + 1 + flip) % 3, third = (major + 2 - flip) % 3;
      const Dims n{grid[major], grid[second], grid[third]};
      if (!parity_allows(n) || !planner.plan(n)) continue;
      Frame f{{0, 0, 0}, {}, n};
      const int order[3] = {major, second, third};
      for (int axis = 0; axis < 3; ++axis) f.dir[axis][order[axis]] = 1;
      std::vector<int64_t> out;
      out.reserve(static_cast<size_t>(frames * height * width));
      walk(planner, f, grid, out);
      return out;
    }
  return serpentine_order(frames, height, width);
}

std::vector<int64_t> inverse_order(const std::vector<int64_t>& order) {
  std::vector<int64_t> inv(order.size(), -1);
  for (size_t i = 0; i < order.size(); ++i) {
    const int64_t j = order[i];
    if (j >= 0 && j < static_cast<int64_t>(order.size())) inv[static_cast<size_t>(j)] = int64_t(i);
  }
  return inv;
}

}  // namespace sparge
