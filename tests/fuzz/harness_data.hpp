// The bodies of the fuzz targets of flowprior::datasets (fuzz_idx.cpp, fuzz_image.cpp), shared
// with the corpus regression test (tests/data/test_data_fuzz_corpus.cpp). io_error is the
// expected outcome for malformed input; any other exception escapes and is a finding, as is any
// sanitizer report. Kept apart from harness.hpp so that the io suite does not need stb or zlib.
#pragma once

#include <cstddef>
#include <cstdint>
#include <flowprior/datasets/decode.hpp>
#include <flowprior/datasets/idx.hpp>
#include <flowprior/datasets/random.hpp>
#include <flowprior/datasets/transform.hpp>
#include <string>
#include <vector>

namespace fuzz {

/// The IDX reader: raw and gzipped streams (inflate bounded to 16 MiB), then the images/labels
/// pairing of whatever parsed, against itself.
inline void idx_one(const std::uint8_t* data, std::size_t size) {
  namespace ds = flowprior::datasets;
  ds::IdxReadOptions opt;
  opt.max_bytes = std::uint64_t{1} << 24;
  try {
    ds::IdxArray a = ds::parse_idx_file(data, size, "fuzz.idx", opt);
    for (std::uint64_t i = 0; i < a.info.numel && i < 64; ++i) (void)a.value(i);
    const ds::IdxArray labels = a;
    (void)ds::idx_images(std::move(a), "fuzz.idx", labels, "fuzz.idx");
  } catch (const flowprior::io_error&) {
  }
  try {
    (void)ds::parse_idx(data, size, "fuzz.idx");
  } catch (const flowprior::io_error&) {
  }
}

/// The image path: decoding (at most 2^20 pixels, RGB and grey) and, for what decodes, the eval
/// and train transforms to a small size.
inline void image_one(const std::uint8_t* data, std::size_t size) {
  namespace ds = flowprior::datasets;
  ds::DecodeLimits limits;
  limits.max_pixels = std::int64_t{1} << 20;
  for (int channels : {3, 1}) {
    try {
      const ds::Image8 img = ds::decode_image(data, size, "fuzz.img", channels, limits);
      ds::ImageTransform tf;
      tf.channels = channels;
      tf.size = 8;
      tf.resize = 11;
      std::vector<float> out(static_cast<std::size_t>(tf.sample_size()));
      ds::SampleRng rng(size, 0, channels);
      ds::transform_image(img, tf, rng, out.data());
      tf.mode = ds::TransformMode::Train;
      ds::transform_image(img, tf, rng, out.data());
    } catch (const flowprior::io_error&) {
    }
  }
}

}  // namespace fuzz
