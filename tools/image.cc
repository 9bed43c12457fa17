#include "image.h"

#include <cstdio>
#include <stdexcept>

#if defined(SPARGE_HAVE_PNG)
#include <png.h>
#endif

namespace sparge::cli {

bool png_supported() {
#if defined(SPARGE_HAVE_PNG)
  return true;
#else
  return false;
#endif
}

namespace {

void write_pgm(const GrayImage& img, const std::string& path) {
  std::FILE* f = std::fopen(path.c_str(), "wb");
  if (f == nullptr) throw std::runtime_error("cannot open '" + path + "' for writing");
  std::fprintf(f, "P5\n%lld %lld\n255\n", static_cast<long long>(img.width),
               static_cast<long long>(img.height));
  const size_t n = img.pixels.size();
  const bool ok = std::fwrite(img.pixels.data(), 1, n, f) == n;
  if (std::fclose(f) != 0 || !ok) throw std::runtime_error("failed writing '" + path + "'");
}

#if defined(SPARGE_HAVE_PNG)
void write_png(const GrayImage& img, const std::string& path) {
  png_image image{};
  image.version = PNG_IMAGE_VERSION;
  image.width = static_cast<png_uint_32>(img.width);
  image.height = static_cast<png_uint_32>(img.height);
  image.format = PNG_FORMAT_GRAY;
  if (!png_image_write_to_file(&image, path.c_str(), 0, img.pixels.data(),
                               static_cast<png_int_32>(img.width), nullptr))
    throw std::runtime_error("libpng could not write '" + path + "': " + image.message);
}
#endif

}  // namespace

void write_image(const GrayImage& img, const std::string& path, bool png) {
#if defined(SPARGE_HAVE_PNG)
  if (png) return write_png(img, path);
#else
  if (png) throw std::runtime_error("this build has no libpng; use --pgm");
#endif
  write_pgm(img, path);
}

}  // namespace sparge::cli
