// A small, portable pseudo-random generator for the workloads: splitmix64 for bits, Box-Muller
// for normals. Unlike std::normal_distribution it gives the same numbers with every standard
// library (Box-Muller's log/cos run in double; a last-ulp libm difference essentially never
// changes the float that is stored).
#pragma once

#include <cmath>
#include <cstdint>

namespace sparge::workloads::detail {

class Rng {
 public:
  explicit Rng(uint64_t seed) : state_(seed) {}

  // A generator for one named stream of a workload (a tensor, a head, ...): streams with
  // different ids are independent and adding one never shifts the others.
  static Rng stream(uint64_t seed, uint64_t id0, uint64_t id1 = 0, uint64_t id2 = 0) {
    Rng mix(seed ^ 0x5eed5eed5eed5eedULL);
    uint64_t s = mix.next();
    for (uint64_t id : {id0, id1, id2}) {
      Rng step(s ^ (id * 0x9e3779b97f4a7c15ULL + 0x632be59bd9b4e019ULL));
      s = step.next();
    }
    return Rng(s);
  }

  uint64_t next() {
    uint64_t z = (state_ += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
  }

  // Uniform in [0, 1) with 53 random bits.
  double uniform() { return static_cast<double>(next() >> 11) * 0x1.0p-53; }

  // Uniform integer in [0, n).
  int64_t below(int64_t n) { return static_cast<int64_t>(uniform() * static_cast<double>(n)); }

  double normal() {
    if (has_spare_) {
      has_spare_ = false;
      return spare_;
    }
    const double u1 = 1.0 - uniform();  // (0, 1]: log stays finite
    const double u2 = uniform();
    const double r = std::sqrt(-2.0 * std::log(u1));
    const double angle = 2.0 * kPi * u2;
    spare_ = r * std::sin(angle);
    has_spare_ = true;
    return r * std::cos(angle);
  }

  static constexpr double kPi = 3.14159265358979323846;

 private:
  uint64_t state_;
  double spare_ = 0.0;
  bool has_spare_ = false;
};

}  // namespace sparge::workloads::detail
