/// @file
/// IDX files, the format of the MNIST family (LeCun et al.; Fashion-MNIST, KMNIST, EMNIST),
/// raw or gzipped (docs/data.md "IDX"):
///
///   [0x00 0x00][type byte][ndims byte][ndims x u32 big-endian dims][data, big-endian]
///   type: 0x08 u8, 0x09 i8, 0x0B i16, 0x0C i32, 0x0D f32, 0x0E f64
///
/// Parsing is strict, in the style of io/npy.hpp: every malformed input is an io_error naming the
/// file, the byte offset (of the decompressed stream) and what was expected versus found; the
/// data must have exactly the size the dims give. A gzip stream is inflated through zlib in
/// chunks, never beyond IdxReadOptions::max_bytes, so memory is bounded by the real content and a
/// limit, never by what a header claims. Fashion-MNIST ships with Debian
/// (dataset-fashion-mnist): load_fashion_mnist reads it.
#pragma once

#include <zlib.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <flowprior/core/error.hpp>
#include <flowprior/io/file.hpp>
#include <limits>
#include <string>
#include <vector>

namespace flowprior {
namespace datasets {

/// Element types of IDX files (the third magic byte).
enum class IdxType : std::uint8_t {
  U8 = 0x08,
  I8 = 0x09,
  I16 = 0x0B,
  I32 = 0x0C,
  F32 = 0x0D,
  F64 = 0x0E
};

/// Bytes per element of an IdxType; 0 for a byte that is no IdxType.
inline std::size_t idx_type_size(std::uint8_t t) {
  switch (t) {
    case 0x08:
    case 0x09:
      return 1;
    case 0x0B:
      return 2;
    case 0x0C:
    case 0x0D:
      return 4;
    case 0x0E:
      return 8;
    default:
      return 0;
  }
}

/// The name of an IdxType ("u8", "i8", "i16", "i32", "f32", "f64").
inline const char* to_string(IdxType t) {
  switch (t) {
    case IdxType::U8:
      return "u8";
    case IdxType::I8:
      return "i8";
    case IdxType::I16:
      return "i16";
    case IdxType::I32:
      return "i32";
    case IdxType::F32:
      return "f32";
    default:
      return "f64";
  }
}

/// What an IDX header says.
struct IdxInfo {
  IdxType type = IdxType::U8;
  std::vector<std::int64_t> dims;  ///< outermost first (C order: the last index runs fastest)
  std::uint64_t data_offset = 0;   ///< 4 + 4 * dims.size()
  std::uint64_t numel = 0;         ///< the product of dims
  /// Bytes per element.
  std::size_t element_size() const { return idx_type_size(static_cast<std::uint8_t>(type)); }
};

/// An IDX array: its header and its elements in host byte order (numel * element_size bytes).
struct IdxArray {
  IdxInfo info;
  std::vector<std::uint8_t> data;

  /// Element i converted to double (every IdxType converts exactly). Precondition: i < numel.
  double value(std::uint64_t i) const {
    const std::uint8_t* p = data.data() + i * info.element_size();
    switch (info.type) {
      case IdxType::U8:
        return p[0];
      case IdxType::I8:
        return static_cast<std::int8_t>(p[0]);
      case IdxType::I16: {
        std::int16_t v;
        std::memcpy(&v, p, 2);
        return v;
      }
      case IdxType::I32: {
        std::int32_t v;
        std::memcpy(&v, p, 4);
        return v;
      }
      case IdxType::F32: {
        float v;
        std::memcpy(&v, p, 4);
        return v;
      }
      default: {
        double v;
        std::memcpy(&v, p, 8);
        return v;
      }
    }
  }
};

/// Options of read_idx.
struct IdxReadOptions {
  /// Largest file, and largest decompressed stream, accepted (default 4 GiB; Fashion-MNIST's
  /// training images are 47 MB).
  std::uint64_t max_bytes = std::uint64_t{1} << 32;
};

namespace detail {

inline std::string idx_hex(std::uint8_t b) {
  static const char* hex = "0123456789abcdef";
  return std::string("0x") + hex[b >> 4] + hex[b & 15];
}

inline std::string idx_dims_str(const std::vector<std::int64_t>& d) {
  std::string s = "(";
  for (std::size_t i = 0; i < d.size(); ++i) s += (i ? ", " : "") + std::to_string(d[i]);
  return s + (d.size() == 1 ? ",)" : ")");
}

inline std::uint32_t load_u32_be(const std::uint8_t* p) {
  return (std::uint32_t(p[0]) << 24) | (std::uint32_t(p[1]) << 16) | (std::uint32_t(p[2]) << 8) |
         std::uint32_t(p[3]);
}

}  // namespace detail

/// Parses and validates the header of an (uncompressed) IDX stream of `size` bytes.
/// @throws io_error "<name> at byte <offset>: expected ..., found ..." for a stream shorter than
///         the magic or the dims, a magic not starting with two zero bytes, an unknown type byte,
///         zero dimensions, or a data size that overflows 2^63 - 1 bytes.
inline IdxInfo parse_idx_header(const std::uint8_t* data, std::size_t size,
                                const std::string& name) {
  if (size < 4)
    io::fail(name, size,
             "expected the 4-byte IDX magic, found the end of the data after " +
                 std::to_string(size) + " bytes");
  if (data[0] != 0 || data[1] != 0)
    io::fail(name, 0,
             "expected an IDX magic starting with two zero bytes, found " +
                 detail::idx_hex(data[0]) + " " + detail::idx_hex(data[1]));
  if (idx_type_size(data[2]) == 0)
    io::fail(name, 2,
             "expected a type byte 0x08 (u8), 0x09 (i8), 0x0b (i16), 0x0c (i32), 0x0d (f32) or "
             "0x0e (f64), found " +
                 detail::idx_hex(data[2]));
  IdxInfo info;
  info.type = static_cast<IdxType>(data[2]);
  const std::size_t ndims = data[3];
  if (ndims == 0) io::fail(name, 3, "expected at least one dimension, found 0");
  const std::uint64_t header = 4 + 4 * std::uint64_t(ndims);
  if (size < header)
    io::fail(name, size,
             "expected " + std::to_string(ndims) + " dimensions of 4 bytes (a header of " +
                 std::to_string(header) + " bytes), found the end of the data after " +
                 std::to_string(size) + " bytes");
  std::uint64_t numel = 1, bytes = info.element_size();
  bool overflow = false;
  for (std::size_t k = 0; k < ndims; ++k) {
    const std::uint32_t d = detail::load_u32_be(data + 4 + 4 * k);
    info.dims.push_back(d);
    if (__builtin_mul_overflow(numel, std::uint64_t(d), &numel) ||
        __builtin_mul_overflow(bytes, std::uint64_t(d), &bytes) ||
        bytes > static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max()))
      overflow = true;
  }
  if (overflow)
    io::fail(name, 4,
             "expected dims whose data fit in 2^63 - 1 bytes, found " +
                 detail::idx_dims_str(info.dims) + " of " + to_string(info.type) +
                 " (the size overflows)");
  info.numel = numel;
  info.data_offset = header;
  return info;
}

/// Parses a whole uncompressed IDX stream: the header, then exactly numel * element_size data
/// bytes, converted from big-endian to host order.
/// @throws io_error for a bad header (parse_idx_header), fewer data bytes than the dims give
///         (truncated) or more (trailing bytes).
inline IdxArray parse_idx(const std::uint8_t* data, std::size_t size, const std::string& name) {
  IdxArray a;
  a.info = parse_idx_header(data, size, name);
  const std::size_t es = a.info.element_size();
  const std::uint64_t need = a.info.numel * es;  // checked by the header parser
  const std::uint64_t off = a.info.data_offset, avail = size - off;
  if (avail < need)
    io::fail(name, size,
             "expected " + std::to_string(need) + " data bytes (dims " +
                 detail::idx_dims_str(a.info.dims) + " of " + to_string(a.info.type) +
                 ") from byte " + std::to_string(off) + ", found " + std::to_string(avail) +
                 " (the file is truncated)");
  if (avail > need)
    io::fail(name, off + need,
             "expected the end of the data after " + std::to_string(need) + " data bytes (dims " +
                 detail::idx_dims_str(a.info.dims) + "), found " + std::to_string(avail - need) +
                 " extra bytes");
  a.data.assign(data + off, data + off + need);
  if (es > 1)
    for (std::uint64_t i = 0; i < a.info.numel; ++i)
      std::reverse(a.data.begin() + static_cast<std::ptrdiff_t>(i * es),
                   a.data.begin() + static_cast<std::ptrdiff_t>((i + 1) * es));
  return a;
}

/// Whether `data` starts with the gzip magic 1f 8b.
inline bool is_gzip(const std::uint8_t* data, std::size_t size) {
  return size >= 2 && data[0] == 0x1f && data[1] == 0x8b;
}

/// Inflates a gzip stream (one or more members, as gzip -d accepts) through zlib, in chunks,
/// refusing to produce more than `max_bytes`. zlib checks each member's CRC-32 and length.
/// @throws io_error naming `name`: a corrupt stream (zlib's message), a stream that ends before
///         its end (truncated), bytes after the last member that are not a member, or an output
///         above max_bytes.
inline std::vector<std::uint8_t> gunzip(const std::uint8_t* data, std::size_t size,
                                        const std::string& name, std::uint64_t max_bytes) {
  if (max_bytes >= std::numeric_limits<std::uint64_t>::max() / 2) max_bytes /= 2;
  std::vector<std::uint8_t> out;
  std::size_t pos = 0;
  z_stream zs;
  std::memset(&zs, 0, sizeof zs);
  if (inflateInit2(&zs, 16 + MAX_WBITS) != Z_OK)
    io::fail(name, "cannot start zlib's inflate (out of memory)");
  struct End {
    z_stream* z;
    ~End() { inflateEnd(z); }
  } end{&zs};
  constexpr std::size_t kChunk = std::size_t{1} << 20;
  std::size_t filled = 0;  // bytes of `out` written; out.size() is what is allocated
  auto too_large = [&]() {
    io::fail(name, "the gzip stream inflates to more than " + std::to_string(max_bytes) +
                       " bytes (IdxReadOptions::max_bytes)");
  };
  for (;;) {  // one gzip member per iteration
    for (;;) {
      if (filled == out.size())  // one byte beyond the limit tells "more" from "exactly"
        out.resize(filled + static_cast<std::size_t>(
                                std::min<std::uint64_t>(kChunk, max_bytes + 1 - filled)));
      const std::size_t in_now = std::min<std::size_t>(size - pos, std::size_t{1} << 30);
      zs.next_in = const_cast<Bytef*>(data + pos);
      zs.avail_in = static_cast<uInt>(in_now);
      zs.next_out = out.data() + filled;
      zs.avail_out = static_cast<uInt>(out.size() - filled);
      const int rc = inflate(&zs, Z_NO_FLUSH);
      pos += in_now - zs.avail_in;
      filled = out.size() - zs.avail_out;
      if (filled > max_bytes) too_large();
      if (rc == Z_STREAM_END) break;
      if (rc == Z_OK) continue;
      if (rc == Z_BUF_ERROR) {
        if (filled == out.size()) continue;  // only room was missing
        if (pos >= size)
          io::fail(name, size,
                   "expected more of the gzip stream, found the end of the file (the file is "
                   "truncated)");
        io::fail(name, pos, "the gzip stream does not progress");
      }
      if (rc == Z_DATA_ERROR || rc == Z_NEED_DICT)
        io::fail(
            name, pos,
            std::string("corrupt gzip stream (zlib: ") + (zs.msg ? zs.msg : "data error") + ")");
      if (rc == Z_MEM_ERROR) io::fail(name, "out of memory while inflating the gzip stream");
      io::fail(name, pos, "zlib's inflate failed with code " + std::to_string(rc));
    }
    if (pos == size) break;
    if (!is_gzip(data + pos, size - pos))
      io::fail(name, pos,
               "expected the end of the file or another gzip member, found " +
                   std::to_string(size - pos) + " trailing bytes");
    if (inflateReset(&zs) != Z_OK) io::fail(name, pos, "cannot reset zlib's inflate");
  }
  out.resize(filled);
  return out;
}

/// Parses an IDX stream held in memory, inflating it first when it starts with the gzip magic.
/// Offsets in messages are in the decompressed stream.
inline IdxArray parse_idx_file(const std::uint8_t* data, std::size_t size, const std::string& name,
                               const IdxReadOptions& opt = {}) {
  if (!is_gzip(data, size)) return parse_idx(data, size, name);
  const std::vector<std::uint8_t> raw = gunzip(data, size, name, opt.max_bytes);
  return parse_idx(raw.data(), raw.size(), name + " (inflated)");
}

/// Reads an IDX file, raw or gzipped (told by its content, not its name).
/// @throws io_error naming `path` (io::read_file, gunzip, parse_idx).
inline IdxArray read_idx(const std::string& path, const IdxReadOptions& opt = {}) {
  const std::vector<std::uint8_t> bytes = io::read_file(path, opt.max_bytes);
  return parse_idx_file(bytes.data(), bytes.size(), path, opt);
}

/// Labelled 8-bit images held in memory, as the MNIST family ships them.
struct ImageArray {
  std::int64_t count = 0, channels = 1, height = 0, width = 0;
  /// Image i is pixels[i * C*H*W, (i + 1) * C*H*W), channel-major (CHW), rows top to bottom.
  std::vector<std::uint8_t> pixels;
  std::vector<int> labels;  ///< one per image
  /// Values per image: channels * height * width.
  std::int64_t sample_size() const { return channels * height * width; }
};

/// Pairs an images file (u8, dims (count, rows, cols)) with a labels file (u8, dims (count,))
/// into an ImageArray (one channel).
/// @throws io_error naming the file: a wrong type or number of dims, or counts that differ.
inline ImageArray idx_images(IdxArray&& images, const std::string& images_name,
                             const IdxArray& labels, const std::string& labels_name) {
  if (images.info.type != IdxType::U8 || images.info.dims.size() != 3)
    io::fail(images_name, 2,
             std::string("expected images: u8 with dims (count, rows, cols), found ") +
                 to_string(images.info.type) + " with dims " +
                 detail::idx_dims_str(images.info.dims));
  if (labels.info.type != IdxType::U8 || labels.info.dims.size() != 1)
    io::fail(labels_name, 2,
             std::string("expected labels: u8 with dims (count,), found ") +
                 to_string(labels.info.type) + " with dims " +
                 detail::idx_dims_str(labels.info.dims));
  if (labels.info.dims[0] != images.info.dims[0])
    io::fail(labels_name, 4,
             "expected " + std::to_string(images.info.dims[0]) + " labels, one per image of " +
                 images_name + ", found " + std::to_string(labels.info.dims[0]));
  ImageArray a;
  a.count = images.info.dims[0];
  a.height = images.info.dims[1];
  a.width = images.info.dims[2];
  a.pixels = std::move(images.data);
  a.labels.assign(labels.data.begin(), labels.data.end());
  return a;
}

/// Reads an images file and its labels file (raw or gzipped) into an ImageArray.
inline ImageArray read_idx_images(const std::string& images_path, const std::string& labels_path,
                                  const IdxReadOptions& opt = {}) {
  IdxArray images = read_idx(images_path, opt);
  const IdxArray labels = read_idx(labels_path, opt);
  return idx_images(std::move(images), images_path, labels, labels_path);
}

/// Where Debian's dataset-fashion-mnist installs the files.
inline const char* fashion_mnist_dir() { return "/usr/share/datasets/fashion-mnist"; }

/// The two splits of the MNIST family.
enum class Split { Train, Test };

/// The images and labels files of a split in `dir`, named as the MNIST family ships them:
/// {train,t10k}-{images-idx3,labels-idx1}-ubyte.gz.
inline std::string mnist_file(const std::string& dir, Split split, bool images) {
  return dir + "/" + (split == Split::Train ? "train" : "t10k") +
         (images ? "-images-idx3-ubyte.gz" : "-labels-idx1-ubyte.gz");
}

/// Fashion-MNIST (the default data set): 60000 training or 10000 test images of 28 x 28, labels
/// 0..9, from `dir` (default: Debian's dataset-fashion-mnist).
/// @throws io_error when the files are missing or malformed.
inline ImageArray load_fashion_mnist(Split split, const std::string& dir = fashion_mnist_dir()) {
  return read_idx_images(mnist_file(dir, split, true), mnist_file(dir, split, false));
}

}  // namespace datasets
}  // namespace flowprior
