/// @file
/// NumPy .npy files: read (format versions 1.0, 2.0 and 3.0; little-endian float16/32/64) and
/// write (float32/float64, version 1.0, or 2.0 when the header does not fit), plus the mapping
/// between NumPy's (count, dim) sample arrays and flowprior's column-major (dim, count) layout
/// (docs/formats.md "NumPy .npy").
///
/// Parsing is strict and bounded: every malformed input throws io_error naming the file, the byte
/// offset and what was expected versus found (io::fail); nothing is allocated before the file is
/// known to hold the bytes it claims, so memory use is bounded by the input size.
/// No Eigen include: data come and go as flat vectors and raw pointers.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <flowprior/core/error.hpp>
#include <flowprior/io/file.hpp>
#include <limits>
#include <sstream>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#if defined(__BYTE_ORDER__) && defined(__ORDER_LITTLE_ENDIAN__)
static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__,
              "flowprior/io/npy.hpp reads and writes little-endian data with memcpy");
#endif

namespace flowprior {
namespace io {

/// What a .npy header says. `shape` is in NumPy's order (C order: last index fastest, unless
/// `fortran_order`). `data_offset` is the byte where the data start (the preamble length).
struct NpyInfo {
  std::string descr;           ///< dtype string: "<f2", "<f4" or "<f8" once parsed
  bool fortran_order = false;  ///< true: first index fastest (column-major)
  std::vector<std::int64_t> shape;
  int major = 1, minor = 0;  ///< format version
  std::uint64_t data_offset = 0;
  /// Number of elements: the product of `shape` (1 for a 0-d array, 0 if any dim is 0).
  std::uint64_t numel() const {
    std::uint64_t n = 1;
    for (std::int64_t d : shape) n *= static_cast<std::uint64_t>(d);
    return n;
  }
};

/// An array read from a .npy file, converted to S. `data` is in the file's element order
/// (C or Fortran order, see info.fortran_order); data.size() == info.numel().
template <class S>
struct NpyArray {
  NpyInfo info;
  std::vector<S> data;
};

/// A batch of samples in flowprior's layout: column-major (dim, count), one column per sample.
template <class S>
struct Samples {
  std::int64_t dim = 0, count = 0;
  std::vector<S> data;  ///< (dim, count) column-major: sample j is data[j*dim .. j*dim + dim)
};

namespace detail {

inline std::string npy_shape_str(const std::vector<std::int64_t>& shape) {
  std::string s = "(";
  for (std::size_t i = 0; i < shape.size(); ++i) {
    if (i) s += ", ";
    s += std::to_string(shape[i]);
  }
  if (shape.size() == 1) s += ",";
  return s + ")";
}

/// Bytes per element of a supported descr, 0 for any other.
inline std::size_t npy_itemsize(const std::string& descr) {
  if (descr == "<f8") return 8;
  if (descr == "<f4") return 4;
  if (descr == "<f2") return 2;
  return 0;
}

/// Printable rendering of raw header bytes for messages: non-printable bytes as \xNN, cut at
/// `max_len` bytes.
inline std::string npy_printable(const std::uint8_t* p, std::size_t n, std::size_t max_len = 64) {
  static const char* hex = "0123456789abcdef";
  std::string s;
  const std::size_t m = n < max_len ? n : max_len;
  for (std::size_t i = 0; i < m; ++i) {
    const std::uint8_t c = p[i];
    if (c >= 0x20 && c < 0x7f && c != '\\') {
      s += static_cast<char>(c);
    } else {
      s += "\\x";
      s += hex[c >> 4];
      s += hex[c & 15];
    }
  }
  if (m < n) s += "...";
  return s;
}

/// Recursive-descent parser of the header dict, a Python literal such as
/// {'descr': '<f4', 'fortran_order': False, 'shape': (3, 4), }
/// followed by space padding and a final '\n'. Offsets in messages are file offsets.
class NpyHeaderParser {
 public:
  NpyHeaderParser(const std::uint8_t* p, std::size_t n, std::uint64_t base, const std::string& name)
      : p_(p), n_(n), base_(base), name_(name) {}

  void parse(NpyInfo& info) {
    skip_ws();
    expect('{', "'{' opening the header dict");
    bool have_descr = false, have_fortran = false, have_shape = false;
    std::size_t shape_at = 0;
    for (;;) {
      skip_ws();
      if (peek() == '}') break;
      const std::size_t key_at = pos_;
      if (peek() != '\'' && peek() != '"') error(pos_, "a quoted key or '}'");
      const std::string key = parse_string();
      skip_ws();
      expect(':', "':' after the key '" + key + "'");
      skip_ws();
      bool* seen = nullptr;
      if (key == "descr") {
        seen = &have_descr;
      } else if (key == "fortran_order") {
        seen = &have_fortran;
      } else if (key == "shape") {
        seen = &have_shape;
      } else {
        fail(name_, base_ + key_at,
             "expected one of the keys 'descr', 'fortran_order', 'shape', found '" +
                 printable(key) + "'");
      }
      if (*seen) fail(name_, base_ + key_at, "expected each key once, found '" + key + "' twice");
      *seen = true;
      if (key == "descr") {
        info.descr = parse_descr();
      } else if (key == "fortran_order") {
        info.fortran_order = parse_bool();
      } else {
        shape_at = pos_;
        info.shape = parse_shape();
      }
      skip_ws();
      if (peek() == ',') {
        ++pos_;
        continue;
      }
      skip_ws();
      if (peek() != '}') error(pos_, "',' or '}' after the value of '" + key + "'");
    }
    const std::size_t close_at = pos_;
    ++pos_;
    const char* missing = !have_descr     ? "descr"
                          : !have_fortran ? "fortran_order"
                          : !have_shape   ? "shape"
                                          : nullptr;
    if (missing)
      fail(name_, base_ + close_at,
           std::string("expected the key '") + missing +
               "' in the header dict, found '}' without it");
    // Trailing part: space padding, then exactly one final '\n'.
    if (n_ == 0 || p_[n_ - 1] != '\n') error(n_ == 0 ? 0 : n_ - 1, "'\\n' as the last header byte");
    for (; pos_ + 1 < n_; ++pos_)
      if (p_[pos_] != ' ') error(pos_, "only space padding after the header dict");
    // The data size in bytes must fit in int64 (NumPy's limit): numel over the non-zero dims.
    const std::size_t itemsize = npy_itemsize(info.descr);
    std::uint64_t bytes = itemsize;
    for (std::int64_t d : info.shape) {
      if (d == 0) continue;
      if (__builtin_mul_overflow(bytes, static_cast<std::uint64_t>(d), &bytes) ||
          bytes > static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max()))
        fail(name_, base_ + shape_at,
             "expected an array of at most 2^63-1 bytes, found shape " + npy_shape_str(info.shape) +
                 " of " + std::to_string(itemsize) + "-byte elements (the size overflows)");
    }
  }

 private:
  int peek() const { return pos_ < n_ ? p_[pos_] : -1; }

  std::string found(std::size_t at) const {
    if (at >= n_) return "the end of the header";
    const std::uint8_t c = p_[at];
    if (c >= 0x20 && c < 0x7f) return std::string("'") + static_cast<char>(c) + "'";
    static const char* hex = "0123456789abcdef";
    return std::string("byte 0x") + hex[c >> 4] + hex[c & 15];
  }

  [[noreturn]] void error(std::size_t at, const std::string& expected) const {
    fail(name_, base_ + at, "expected " + expected + " in the header, found " + found(at));
  }

  static std::string printable(const std::string& s) {
    return npy_printable(reinterpret_cast<const std::uint8_t*>(s.data()), s.size());
  }

  void expect(char c, const std::string& what) {
    if (peek() != static_cast<unsigned char>(c)) error(pos_, what);
    ++pos_;
  }

  // Python allows any whitespace inside the braces.
  void skip_ws() {
    while (pos_ < n_ &&
           (p_[pos_] == ' ' || p_[pos_] == '\t' || p_[pos_] == '\n' || p_[pos_] == '\r'))
      ++pos_;
  }

  // A '...' or "..." literal without escapes or control characters. Bytes >= 0x80 are kept (the
  // header is Latin-1 in versions 1.0/2.0 and UTF-8 in 3.0; no supported descr contains them).
  std::string parse_string() {
    const int q = peek();
    ++pos_;
    const std::size_t start = pos_;
    for (;;) {
      const int c = peek();
      if (c == q) break;
      if (c < 0) error(pos_, std::string("the closing ") + static_cast<char>(q) + " of a string");
      if (c == '\\') error(pos_, "a string without escape sequences");
      if (c < 0x20 || c == 0x7f) error(pos_, "a printable character in a string");
      ++pos_;
    }
    std::string s(reinterpret_cast<const char*>(p_ + start), pos_ - start);
    ++pos_;
    return s;
  }

  // Skips any Python literal (strings, nested brackets, words) to quote it in a message; never
  // reads past the header.
  std::string raw_value() {
    const std::size_t start = pos_;
    int depth = 0;
    while (pos_ < n_) {
      const std::uint8_t c = p_[pos_];
      if (c == '\'' || c == '"') {
        const std::uint8_t q = c;
        ++pos_;
        while (pos_ < n_ && p_[pos_] != q) ++pos_;
        if (pos_ < n_) ++pos_;
        continue;
      }
      if (c == '[' || c == '(' || c == '{') {
        ++depth;
      } else if (c == ']' || c == ')' || c == '}') {
        if (depth == 0) break;
        --depth;
      } else if (c == ',' && depth == 0) {
        break;
      }
      ++pos_;
    }
    return npy_printable(p_ + start, pos_ - start);
  }

  std::string parse_descr() {
    const std::size_t at = pos_;
    if (peek() != '\'' && peek() != '"') {
      const bool list = peek() == '[';
      const std::string raw = raw_value();
      fail(name_, base_ + at,
           "expected descr '<f4', '<f8' or '<f2' (a little-endian float dtype), found " +
               (list          ? "the structured dtype " + raw
                : raw.empty() ? found(at)
                              : raw));
    }
    std::string d = parse_string();
    if (npy_itemsize(d) == 0)
      fail(name_, base_ + at,
           "expected descr '<f4', '<f8' or '<f2' (a little-endian float dtype), found descr '" +
               printable(d) + "'");
    return d;
  }

  bool parse_bool() {
    const std::size_t at = pos_;
    // An identifier (ASCII letters, digits, '_'; locale-independent).
    auto word_char = [](std::uint8_t c) {
      return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_';
    };
    while (pos_ < n_ && word_char(p_[pos_])) ++pos_;
    const std::string w(reinterpret_cast<const char*>(p_ + at), pos_ - at);
    if (w == "True") return true;
    if (w == "False") return false;
    pos_ = at;
    fail(name_, base_ + at,
         "expected True or False for 'fortran_order', found " +
             (w.empty() ? found(at) : "'" + printable(w) + "'"));
  }

  std::int64_t parse_dim() {
    const std::size_t at = pos_;
    if (peek() == '-') fail(name_, base_ + at, "expected a non-negative dimension, found '-'");
    if (peek() < '0' || peek() > '9') error(at, "a dimension (a non-negative integer)");
    if (peek() == '0' && pos_ + 1 < n_ && p_[pos_ + 1] >= '0' && p_[pos_ + 1] <= '9')
      error(at + 1, "no leading zero in a dimension");
    std::uint64_t v = 0;
    while (peek() >= '0' && peek() <= '9') {
      v = v * 10 + static_cast<std::uint64_t>(p_[pos_] - '0');
      if (v > static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max()))
        fail(name_, base_ + at, "expected a dimension of at most 2^63-1, found a larger integer");
      ++pos_;
    }
    if (peek() == 'L' || peek() == 'l') ++pos_;  // Python 2 long (old files)
    return static_cast<std::int64_t>(v);
  }

  // "()", "(3,)", "(3, 4)", "(3, 4,)"; "(3)" is an int in Python, not a tuple.
  std::vector<std::int64_t> parse_shape() {
    std::vector<std::int64_t> shape;
    expect('(', "a shape tuple '(' for 'shape'");
    skip_ws();
    if (peek() == ')') {
      ++pos_;
      return shape;
    }
    for (;;) {
      shape.push_back(parse_dim());
      skip_ws();
      if (peek() == ')') {
        if (shape.size() == 1) error(pos_, "',' after the only dimension (a 1-tuple is '(n,)')");
        ++pos_;
        return shape;
      }
      expect(',', "',' or ')' in the shape tuple");
      skip_ws();
      if (peek() == ')') {
        ++pos_;
        return shape;
      }
    }
  }

  const std::uint8_t* p_;
  std::size_t n_;
  std::uint64_t base_;
  const std::string& name_;
  std::size_t pos_ = 0;
};

inline double npy_half_to_double(std::uint16_t h) {
  const int sign = h >> 15, exp = (h >> 10) & 0x1f, mant = h & 0x3ff;
  double v;
  if (exp == 0) {
    v = std::ldexp(static_cast<double>(mant), -24);  // zero or subnormal
  } else if (exp == 31) {
    v = mant ? std::numeric_limits<double>::quiet_NaN() : std::numeric_limits<double>::infinity();
  } else {
    v = std::ldexp(static_cast<double>(mant | 0x400), exp - 25);
  }
  return sign ? -v : v;
}

/// Converts one element; values beyond float range become +-inf (never an out-of-range cast).
template <class S>
inline S npy_load(const std::uint8_t* p, std::size_t itemsize) {
  if (itemsize == 4) {
    float f;
    std::memcpy(&f, p, 4);
    return static_cast<S>(f);
  }
  double d;
  if (itemsize == 8) {
    std::memcpy(&d, p, 8);
  } else {
    std::uint16_t h;
    std::memcpy(&h, p, 2);
    d = npy_half_to_double(h);
  }
  if (std::is_same<S, float>::value && std::isfinite(d) &&
      std::fabs(d) > static_cast<double>(std::numeric_limits<float>::max()))
    return static_cast<S>(d > 0 ? std::numeric_limits<float>::infinity()
                                : -std::numeric_limits<float>::infinity());
  return static_cast<S>(d);
}

/// The full preamble (magic, version, length, header dict, padding, '\n') exactly as NumPy's
/// format.write_array writes it: keys sorted, spare spaces after the dict so that the growth axis
/// can be rewritten in place (GROWTH_AXIS_MAX_DIGITS = 21), padded with spaces to a multiple of 64
/// (a full 64 when already aligned, as NumPy does). Version 1.0 unless the header exceeds 65535
/// bytes, then 2.0.
inline std::string npy_preamble(const char* descr, const std::vector<std::int64_t>& shape,
                                bool fortran_order) {
  std::string dict = std::string("{'descr': '") + descr +
                     "', 'fortran_order': " + (fortran_order ? "True" : "False") +
                     ", 'shape': " + npy_shape_str(shape) + ", }";
  if (!shape.empty()) {
    const std::size_t digits = std::to_string(fortran_order ? shape.back() : shape.front()).size();
    dict.append(21 - digits, ' ');
  }
  for (int major = 1; major <= 2; ++major) {
    const std::size_t prefix = major == 1 ? 10 : 12;
    const std::size_t hlen = dict.size() + 1;
    const std::size_t total = hlen + (64 - (prefix + hlen) % 64);
    if (major == 1 && total > 65535) continue;
    std::string out("\x93NUMPY", 6);
    out += static_cast<char>(major);
    out += '\0';
    for (std::size_t i = 0; i < prefix - 8; ++i)
      out += static_cast<char>((total >> (8 * i)) & 0xff);
    out += dict;
    out.append(total - hlen, ' ');
    out += '\n';
    return out;
  }
  ::flowprior::detail::raise<io_error>("[flowprior.io] unreachable: .npy header too long");
}

template <class S>
constexpr const char* npy_descr_of() {
  static_assert(std::is_same<S, float>::value || std::is_same<S, double>::value,
                "write_npy supports float and double");
  return std::is_same<S, float>::value ? "<f4" : "<f8";
}

/// numel of a shape to be written; throws shape_error for a negative dim or an overflow.
inline std::uint64_t npy_checked_numel(const char* where, const std::vector<std::int64_t>& shape,
                                       std::size_t itemsize) {
  std::uint64_t n = 1, bytes = itemsize;
  for (std::int64_t d : shape) {
    if (d < 0)
      ::flowprior::detail::raise<shape_error>(std::string("[flowprior.shape] ") + where +
                                              ": argument 'shape' " + npy_shape_str(shape) +
                                              " has a negative dimension");
    if (d == 0) {
      n = 0;
      continue;
    }
    if (__builtin_mul_overflow(bytes, static_cast<std::uint64_t>(d), &bytes) ||
        bytes > static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max()))
      ::flowprior::detail::raise<shape_error>(std::string("[flowprior.shape] ") + where +
                                              ": argument 'shape' " + npy_shape_str(shape) +
                                              " has more than 2^63-1 bytes");
    n *= static_cast<std::uint64_t>(d);
  }
  return n;
}

}  // namespace detail

/// Parses and validates the preamble of a .npy file held in memory (`size` bytes; the data part
/// need not be present). Accepts format versions 1.0, 2.0 and 3.0, any preamble alignment, keys
/// in any order, ' or " quotes, True/False, a trailing comma and any ndim including 0.
/// @throws io_error "<name> at byte <offset>: expected ..., found ..." for a truncated preamble,
/// a bad magic, an unsupported version, a header past the end of the input, a malformed dict,
/// missing/unknown/duplicate keys, a bad shape tuple, a negative or overflowing dimension,
/// trailing garbage, or a descr other than '<f2', '<f4', '<f8'.
inline NpyInfo parse_npy_header(const std::uint8_t* data, std::size_t size,
                                const std::string& name_for_errors) {
  const std::string& name = name_for_errors;
  static const std::uint8_t magic[6] = {0x93, 'N', 'U', 'M', 'P', 'Y'};
  for (std::size_t i = 0; i < 6; ++i) {
    if (i >= size)
      fail(name, i,
           "expected the magic string \\x93NUMPY, found the end of the file after " +
               std::to_string(size) + " bytes");
    if (data[i] != magic[i])
      fail(name, i,
           "expected the magic string \\x93NUMPY, found " +
               detail::npy_printable(data, size < 6 ? size : 6));
  }
  if (size < 8)
    fail(name, size, "expected the 2 version bytes after the magic, found the end of the file");
  NpyInfo info;
  info.major = data[6];
  info.minor = data[7];
  if (info.major < 1 || info.major > 3 || info.minor != 0)
    fail(name, 6,
         "expected format version 1.0, 2.0 or 3.0, found " + std::to_string(info.major) + "." +
             std::to_string(info.minor));
  const std::size_t len_bytes = info.major == 1 ? 2 : 4;
  const std::size_t start = 8 + len_bytes;
  if (size < start)
    fail(name, size,
         "expected a " + std::to_string(len_bytes) +
             "-byte header length, found the end of the file");
  std::uint64_t header_len = 0;
  for (std::size_t i = 0; i < len_bytes; ++i)
    header_len |= static_cast<std::uint64_t>(data[8 + i]) << (8 * i);
  if (header_len > size - start)
    fail(name, 8,
         "expected a header of " + std::to_string(header_len) + " bytes from byte " +
             std::to_string(start) + ", found only " + std::to_string(size - start) +
             " bytes left in the file");
  detail::NpyHeaderParser(data + start, static_cast<std::size_t>(header_len), start, name)
      .parse(info);
  info.data_offset = start + header_len;
  return info;
}

/// Parses a whole .npy file held in memory and converts its elements to S (float or double).
/// `data` of the result is in the file's element order. The data part must hold exactly
/// numel * itemsize bytes. '<f8' read as float: values beyond float range become +-inf.
/// @param allow_nonfinite false: a NaN or Inf element (after conversion) throws io_error naming
///        its flat index (file element order) and byte offset.
template <class S>
NpyArray<S> parse_npy(const std::uint8_t* data, std::size_t size, const std::string& name,
                      bool allow_nonfinite = true) {
  static_assert(std::is_same<S, float>::value || std::is_same<S, double>::value,
                "parse_npy converts to float or double");
  NpyArray<S> a;
  a.info = parse_npy_header(data, size, name);
  const std::size_t itemsize = detail::npy_itemsize(a.info.descr);
  const std::uint64_t numel = a.info.numel();
  const std::uint64_t need = numel * itemsize;  // no overflow: checked by the header parser
  const std::uint64_t off = a.info.data_offset;
  const std::uint64_t avail = size - off;
  if (avail < need)
    fail(name, size,
         "expected " + std::to_string(need) + " data bytes (" + std::to_string(numel) +
             " elements of " + std::to_string(itemsize) + " bytes, shape " +
             detail::npy_shape_str(a.info.shape) + ") from byte " + std::to_string(off) +
             ", found " + std::to_string(avail));
  if (avail > need)
    fail(name, off + need,
         "expected the end of the file after " + std::to_string(need) + " data bytes (shape " +
             detail::npy_shape_str(a.info.shape) + "), found " + std::to_string(avail - need) +
             " extra bytes");
  const std::size_t n = static_cast<std::size_t>(numel);  // <= size
  a.data.resize(n);
  const std::uint8_t* src = data + off;
  for (std::size_t i = 0; i < n; ++i) {
    const S v = detail::npy_load<S>(src + i * itemsize, itemsize);
    if (!allow_nonfinite && !std::isfinite(v)) {
      std::ostringstream os;
      os << "expected finite values, found " << v << " at flat index " << i
         << " (file element order, shape " << detail::npy_shape_str(a.info.shape) << ")";
      if (std::isinf(v) && std::is_same<S, float>::value && itemsize == 8) {
        double d;
        std::memcpy(&d, src + i * itemsize, 8);
        if (std::isfinite(d)) os << ": the float64 value " << d << " overflows float32";
      }
      fail(name, off + i * itemsize, os.str());
    }
    a.data[i] = v;
  }
  return a;
}

/// Reads a .npy file (see parse_npy). @throws io_error naming `path`.
template <class S>
NpyArray<S> read_npy(const std::string& path, bool allow_nonfinite = true) {
  const std::vector<std::uint8_t> bytes = read_file(path);
  return parse_npy<S>(bytes.data(), bytes.size(), path, allow_nonfinite);
}

/// Writes `data` (numel(shape) elements of S in the order given by `fortran_order`) as a .npy
/// file of dtype '<f4' (float) or '<f8' (double), byte-identical to numpy.save. Atomic: written
/// to a temporary file and renamed over `path` (io::atomic_write); on failure `path` is left as
/// it was. @throws shape_error for a negative dimension or an overflowing size, io_error on I/O
/// failure (or the injected `faults`).
template <class S>
void write_npy(const std::string& path, const S* data, const std::vector<std::int64_t>& shape,
               bool fortran_order = false, WriteFaults faults = {}) {
  const char* descr = detail::npy_descr_of<S>();
  const std::uint64_t numel = detail::npy_checked_numel("write_npy", shape, sizeof(S));
  if (numel > 0 && data == nullptr)
    ::flowprior::detail::raise<shape_error>(
        "[flowprior.shape] write_npy: argument 'data' is null for shape " +
        detail::npy_shape_str(shape));
  const std::string preamble = detail::npy_preamble(descr, shape, fortran_order);
  const std::size_t bytes = static_cast<std::size_t>(numel) * sizeof(S);
  atomic_write(
      path,
      [&](Writer& w) {
        w.write(preamble);
        if (bytes) w.write(data, bytes);
      },
      faults);
}

/// Converts a parsed array of samples to flowprior's (dim, count) column-major layout:
/// - (count,)               -> dim 1;
/// - (count, dim)           -> one row per sample: C order is already (dim, count) column-major
///                             in memory (moved, no copy); Fortran order is transposed;
/// - (batch, tokens, dim)   -> every token is a sample: count = batch * tokens, sample
///                             b * tokens + t (C order moved as is; Fortran order transposed).
/// @throws io_error for 0-d arrays and arrays of more than 3 dimensions.
template <class S>
Samples<S> npy_to_samples(NpyArray<S>&& a, const std::string& name) {
  const std::vector<std::int64_t>& sh = a.info.shape;
  Samples<S> s;
  if (sh.empty() || sh.size() > 3)
    fail(name, a.info.major == 1 ? 10 : 12,
         "expected a 1-D (count,), 2-D (count, dim) or 3-D (batch, tokens, dim) array of samples, "
         "found shape " +
             detail::npy_shape_str(sh));
  if (sh.size() == 1) {
    s.dim = 1;
    s.count = sh[0];
    s.data = std::move(a.data);
    return s;
  }
  const std::int64_t batch = sh[0], tokens = sh.size() == 3 ? sh[1] : 1;
  s.dim = sh.back();
  s.count = batch * tokens;  // no overflow: the header parser bounds the byte size
  if (!a.info.fortran_order || s.count <= 1 || (sh.size() == 2 && s.dim == 1)) {
    s.data = std::move(a.data);  // C order, or a shape where both orders coincide
    return s;
  }
  // Fortran order: element (b, t, d) is at b + batch * (t + tokens * d).
  s.data.resize(a.data.size());
  const std::size_t B = static_cast<std::size_t>(batch), T = static_cast<std::size_t>(tokens),
                    D = static_cast<std::size_t>(s.dim);
  for (std::size_t d = 0; d < D; ++d)
    for (std::size_t t = 0; t < T; ++t)
      for (std::size_t b = 0; b < B; ++b) s.data[d + D * (b * T + t)] = a.data[b + B * (t + T * d)];
  return s;
}

/// parse_npy followed by npy_to_samples.
template <class S>
Samples<S> parse_npy_samples(const std::uint8_t* data, std::size_t size, const std::string& name,
                             bool allow_nonfinite = true) {
  return npy_to_samples<S>(parse_npy<S>(data, size, name, allow_nonfinite), name);
}

/// Reads a .npy array of samples, one ROW per sample (NumPy/PyTorch layout (count, dim)), into
/// flowprior's column-major (dim, count) layout; see npy_to_samples for the accepted shapes.
template <class S>
Samples<S> read_npy_samples(const std::string& path, bool allow_nonfinite = true) {
  return npy_to_samples<S>(read_npy<S>(path, allow_nonfinite), path);
}

/// Writes `count` samples of `dim` values, column-major (dim, count) with one column per sample,
/// as a C-order NumPy array of shape (count, dim) (same bytes in memory; numpy.load gives one
/// row per sample). Atomic, like write_npy.
template <class S>
void write_npy_samples(const std::string& path, const S* colmajor, std::int64_t dim,
                       std::int64_t count, WriteFaults faults = {}) {
  write_npy<S>(path, colmajor, {count, dim}, false, faults);
}

}  // namespace io
}  // namespace flowprior
