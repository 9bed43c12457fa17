// Grey-scale image output for `sparge mask`: PNG through libpng when the build found it
// (SPARGE_HAVE_PNG), binary PGM (P5) otherwise or on request.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace sparge::cli {

struct GrayImage {
  int64_t width = 0, height = 0;
  std::vector<uint8_t> pixels;  // row-major, 0 = black, 255 = white
};

bool png_supported();
// Writes `img` to `path` as PNG (png = true) or PGM; throws std::runtime_error on failure.
void write_image(const GrayImage& img, const std::string& path, bool png);

}  // namespace sparge::cli
