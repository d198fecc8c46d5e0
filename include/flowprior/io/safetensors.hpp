/// @file
/// safetensors read and write (docs/formats.md "safetensors"):
///
///   [u64 LE: header length N][N bytes: JSON header][data]
///   header = { "__metadata__": {str: str}, "<name>": {"dtype": "F32", "shape": [..],
///              "data_offsets": [begin, end]}, ... }   (offsets relative to the data start)
///
/// Reading validates everything before any tensor is used: header length within the file, a
/// well-formed header, known dtypes, shapes whose byte size matches the offsets, offsets inside
/// the data and covering it without overlap or holes. Every failure is an io_error naming the
/// file, the byte offset and what was expected. Tensors convert to float or double on access
/// (F64, F32, F16, BF16 and the integer dtypes); NaN/Inf payloads, and F64 values beyond the
/// float range read as float, are an error unless allowed. A file may carry a CRC-32 of its
/// content in `__metadata__` ("flowprior.checksum", written by SafetensorsWriter::set_checksum;
/// checkpoints always have one), verified on read. Writing is atomic (io::atomic_write).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <flowprior/core/check.hpp>
#include <flowprior/io/checksum.hpp>
#include <flowprior/io/file.hpp>
#include <flowprior/io/json.hpp>
#include <limits>
#include <map>
#include <set>
#include <string>
#include <vector>

namespace flowprior {
namespace io {

static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__,
              "flowprior's file formats are little-endian and so must the host be");

/// Element types of safetensors.
enum class Dtype { BOOL, U8, I8, I16, U16, I32, U32, I64, U64, F16, BF16, F32, F64 };

inline const char* to_string(Dtype d) {
  switch (d) {
    case Dtype::BOOL:
      return "BOOL";
    case Dtype::U8:
      return "U8";
    case Dtype::I8:
      return "I8";
    case Dtype::I16:
      return "I16";
    case Dtype::U16:
      return "U16";
    case Dtype::I32:
      return "I32";
    case Dtype::U32:
      return "U32";
    case Dtype::I64:
      return "I64";
    case Dtype::U64:
      return "U64";
    case Dtype::F16:
      return "F16";
    case Dtype::BF16:
      return "BF16";
    case Dtype::F32:
      return "F32";
    default:
      return "F64";
  }
}

inline std::size_t size_of(Dtype d) {
  switch (d) {
    case Dtype::BOOL:
    case Dtype::U8:
    case Dtype::I8:
      return 1;
    case Dtype::I16:
    case Dtype::U16:
    case Dtype::F16:
    case Dtype::BF16:
      return 2;
    case Dtype::I32:
    case Dtype::U32:
    case Dtype::F32:
      return 4;
    default:
      return 8;
  }
}

inline bool parse_dtype(const std::string& s, Dtype& out) {
  for (Dtype d : {Dtype::BOOL, Dtype::U8, Dtype::I8, Dtype::I16, Dtype::U16, Dtype::I32, Dtype::U32,
                  Dtype::I64, Dtype::U64, Dtype::F16, Dtype::BF16, Dtype::F32, Dtype::F64})
    if (s == to_string(d)) {
      out = d;
      return true;
    }
  return false;
}

template <class S>
constexpr Dtype dtype_of() {
  return sizeof(S) == 8 ? Dtype::F64 : Dtype::F32;
}

// IEEE half and bfloat16 conversions (round to nearest even).   formats.md "dtypes"
inline float half_to_float(std::uint16_t h) {
  const std::uint32_t sign = std::uint32_t(h & 0x8000) << 16;
  std::uint32_t exp = (h >> 10) & 0x1F, man = h & 0x3FF, bits;
  if (exp == 0) {
    if (man == 0) {
      bits = sign;
    } else {  // subnormal: normalise
      exp = 127 - 15 + 1;
      while ((man & 0x400) == 0) {
        man <<= 1;
        --exp;
      }
      man &= 0x3FF;
      bits = sign | (exp << 23) | (man << 13);
    }
  } else if (exp == 31) {
    bits = sign | 0x7F800000u | (man << 13);
  } else {
    bits = sign | ((exp + 127 - 15) << 23) | (man << 13);
  }
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

inline std::uint16_t float_to_half(float f) {
  std::uint32_t x;
  std::memcpy(&x, &f, 4);
  const std::uint16_t sign = std::uint16_t((x >> 16) & 0x8000);
  const std::uint32_t exp = (x >> 23) & 0xFF;
  std::uint32_t man = x & 0x7FFFFF;
  if (exp == 0xFF) return std::uint16_t(sign | 0x7C00 | (man ? 0x200 : 0));  // Inf / NaN
  const int e = int(exp) - 127 + 15;
  if (e >= 31) return std::uint16_t(sign | 0x7C00);  // overflow to Inf
  if (e <= 0) {                                      // subnormal or zero
    if (e < -10) return sign;
    man |= 0x800000;
    const int shift = 14 - e;
    std::uint32_t h = man >> shift;
    const std::uint32_t rem = man & ((1u << shift) - 1), half = 1u << (shift - 1);
    if (rem > half || (rem == half && (h & 1))) ++h;
    return std::uint16_t(sign | h);
  }
  std::uint32_t h = (std::uint32_t(e) << 10) | (man >> 13);
  const std::uint32_t rem = man & 0x1FFF;
  if (rem > 0x1000 || (rem == 0x1000 && (h & 1))) ++h;  // may carry into the exponent: correct
  return std::uint16_t(sign | h);
}

inline float bf16_to_float(std::uint16_t b) {
  const std::uint32_t bits = std::uint32_t(b) << 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

inline std::uint16_t float_to_bf16(float f) {
  std::uint32_t x;
  std::memcpy(&x, &f, 4);
  if ((x & 0x7F800000u) == 0x7F800000u && (x & 0x7FFFFF))  // NaN stays NaN
    return std::uint16_t((x >> 16) | 0x40);
  const std::uint32_t rounding = 0x7FFF + ((x >> 16) & 1);
  return std::uint16_t((x + rounding) >> 16);
}

/// One tensor of a safetensors file.
struct TensorEntry {
  std::string name;
  Dtype dtype = Dtype::F32;
  std::vector<std::int64_t> shape;
  std::uint64_t begin = 0, end = 0;  ///< byte range relative to the data start
  std::uint64_t numel() const {
    std::uint64_t n = 1;
    for (auto s : shape) n *= std::uint64_t(s);
    return n;
  }
};

inline std::string shape_string(const std::vector<std::int64_t>& s) {
  std::string o = "(";
  for (std::size_t i = 0; i < s.size(); ++i) o += (i ? ", " : "") + std::to_string(s[i]);
  return o + (s.size() == 1 ? ",)" : ")");
}

/// The `__metadata__` key of the checksum: "crc32:" and 8 lowercase hex digits, the CRC-32
/// (io::crc32) of the whole file -- length prefix, header and data -- with those 8 digits
/// replaced by ASCII '0' (docs/formats.md "Checksums").
inline const char* checksum_key() { return "flowprior.checksum"; }

/// Whether a parsed file carried a checksum and whether it was compared.
enum class ChecksumState {
  Absent,      ///< no "flowprior.checksum" entry (files from other writers)
  Verified,    ///< present and equal to the content's
  NotVerified  ///< present and well-formed, not compared (ReadOptions::verify_checksum false)
};

/// Options of Safetensors::parse and read.
struct ReadOptions {
  /// Compare a present checksum with the content (an io_error if they differ). Turn off only to
  /// salvage a damaged file or to fuzz what lies behind the checksum.
  bool verify_checksum = true;
  /// Largest file read() accepts (io::read_file).
  std::uint64_t max_file_bytes = kMaxFileBytes;
};

/// A parsed safetensors file held in memory.
class Safetensors {
 public:
  /// Largest header accepted (the reference implementation uses 100 MB).
  static constexpr std::uint64_t kMaxHeader = 100u << 20;

  /// Parses `bytes` (takes ownership); `name` identifies the source in error messages.
  static Safetensors parse(std::vector<std::uint8_t> bytes, std::string name,
                           const ReadOptions& opt = {}) {
    Safetensors st;
    st.name_ = std::move(name);
    st.bytes_ = std::move(bytes);
    st.validate(opt);
    return st;
  }

  /// Reads and parses a file.
  static Safetensors read(const std::string& path, const ReadOptions& opt = {}) {
    return parse(read_file(path, opt.max_file_bytes), path, opt);
  }

  const std::string& source() const { return name_; }
  ChecksumState checksum() const { return checksum_; }
  const std::vector<TensorEntry>& tensors() const { return tensors_; }
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  std::uint64_t data_start() const { return data_start_; }

  const TensorEntry* find(const std::string& name) const {
    for (const auto& t : tensors_)
      if (t.name == name) return &t;
    return nullptr;
  }
  const TensorEntry& at(const std::string& name) const {
    if (const auto* t = find(name)) return *t;
    fail(name_, "no tensor named '" + name + "'");
  }

  /// Converts tensor `name` into out[0..numel) as S. Non-finite values, and for S = float values
  /// beyond its range (an F64 1e300, which the cast would make inf), are an io_error naming the
  /// tensor, the element and its byte offset unless allow_nonfinite (they become +-inf then).
  template <class S>
  void get(const std::string& name, S* out, std::uint64_t n, bool allow_nonfinite = false) const {
    const TensorEntry& t = at(name);
    if (n != t.numel())
      fail(name_, "tensor '" + name + "' has " + std::to_string(t.numel()) +
                      " elements, the destination holds " + std::to_string(n));
    const std::uint8_t* p = bytes_.data() + data_start_ + t.begin;
    const std::size_t es = size_of(t.dtype);
    for (std::uint64_t i = 0; i < n; ++i, p += es) {
      double v = 0;
      switch (t.dtype) {
        case Dtype::F64: {
          double x;
          std::memcpy(&x, p, 8);
          v = x;
          break;
        }
        case Dtype::F32: {
          float x;
          std::memcpy(&x, p, 4);
          v = x;
          break;
        }
        case Dtype::F16: {
          std::uint16_t x;
          std::memcpy(&x, p, 2);
          v = half_to_float(x);
          break;
        }
        case Dtype::BF16: {
          std::uint16_t x;
          std::memcpy(&x, p, 2);
          v = bf16_to_float(x);
          break;
        }
        case Dtype::BOOL:
        case Dtype::U8:
          v = *p;
          break;
        case Dtype::I8:
          v = static_cast<std::int8_t>(*p);
          break;
        case Dtype::I16: {
          std::int16_t x;
          std::memcpy(&x, p, 2);
          v = x;
          break;
        }
        case Dtype::U16: {
          std::uint16_t x;
          std::memcpy(&x, p, 2);
          v = x;
          break;
        }
        case Dtype::I32: {
          std::int32_t x;
          std::memcpy(&x, p, 4);
          v = x;
          break;
        }
        case Dtype::U32: {
          std::uint32_t x;
          std::memcpy(&x, p, 4);
          v = x;
          break;
        }
        case Dtype::I64: {
          std::int64_t x;
          std::memcpy(&x, p, 8);
          v = double(x);
          break;
        }
        case Dtype::U64: {
          std::uint64_t x;
          std::memcpy(&x, p, 8);
          v = double(x);
          break;
        }
      }
      if (!allow_nonfinite && !std::isfinite(v))
        fail(name_, data_start_ + t.begin + i * es,
             "tensor '" + name + "' holds a non-finite value (" + std::to_string(v) +
                 ") at element " + std::to_string(i) + "; pass allow_nonfinite to accept it");
      if (sizeof(S) < sizeof(double) && std::isfinite(v) &&
          std::fabs(v) > static_cast<double>(std::numeric_limits<S>::max())) {
        if (!allow_nonfinite) {
          char b[32];
          std::snprintf(b, sizeof b, "%.17g", v);
          fail(name_, data_start_ + t.begin + i * es,
               "tensor '" + name + "' holds a value beyond the float range at element " +
                   std::to_string(i) + ": the " + to_string(t.dtype) + " value " + b +
                   " overflows float32 (it would become inf); pass allow_nonfinite to accept it");
        }
        out[i] = v > 0 ? std::numeric_limits<S>::infinity() : -std::numeric_limits<S>::infinity();
        continue;
      }
      out[i] = static_cast<S>(v);
    }
  }

  template <class S>
  std::vector<S> get(const std::string& name, bool allow_nonfinite = false) const {
    std::vector<S> v(static_cast<std::size_t>(at(name).numel()));
    get<S>(name, v.data(), v.size(), allow_nonfinite);
    return v;
  }

 private:
  void validate(const ReadOptions& opt) {
    const std::uint64_t size = bytes_.size();
    if (size < 8)
      fail(name_, 0,
           "file too short for the 8-byte header length: expected at least 8 bytes, "
           "found " +
               std::to_string(size));
    const std::uint64_t n = load_u64_le(bytes_.data());
    if (n > kMaxHeader)
      fail(name_, 0,
           "header length " + std::to_string(n) + " exceeds the limit of " +
               std::to_string(kMaxHeader) + " bytes");
    if (n > size - 8)
      fail(name_, 0,
           "header length " + std::to_string(n) + " runs past the end of the file (" +
               std::to_string(size) + " bytes)");
    if (n < 2)
      fail(name_, 8, "header of " + std::to_string(n) + " bytes cannot hold a JSON object");
    data_start_ = 8 + n;
    const char* h = reinterpret_cast<const char*>(bytes_.data() + 8);
    if (h[0] != '{') fail(name_, 8, "expected the header to start with '{'");
    json::Reader reader(h, h + n, 8, name_);
    const json::Value root = reader.parse_document();
    if (root.kind != json::Value::Kind::Object) fail(name_, 8, "header is not a JSON object");
    const json::Value* meta = nullptr;
    for (const auto& kv : root.object)
      if (kv.first == "__metadata__") {
        if (meta) fail(name_, kv.second.offset, "duplicate __metadata__ object");
        meta = &kv.second;
      }
    if (meta) read_metadata(*meta);
    // The checksum first: a damaged file is reported as such, not by what the damage broke.
    check_checksum(meta, opt);
    std::set<std::string> names;
    for (const auto& kv : root.object) {
      if (kv.first == "__metadata__") continue;
      if (!names.insert(kv.first).second)
        fail(name_, kv.second.offset, "duplicate tensor name '" + kv.first + "'");
      tensors_.push_back(read_entry(kv.first, kv.second));
    }
    // Offsets, as the reference implementation: sorted by (begin, end), the tensors must tile
    // the data exactly -- each begins where the previous ended (zero-size tensors, begin == end,
    // included), and the last ends at the end of the data.
    const std::uint64_t data_size = size - data_start_;
    std::vector<const TensorEntry*> order;
    for (const auto& t : tensors_) order.push_back(&t);
    std::sort(order.begin(), order.end(), [](const TensorEntry* a, const TensorEntry* b) {
      return a->begin != b->begin ? a->begin < b->begin : a->end < b->end;
    });
    std::uint64_t pos = 0;
    for (const auto* t : order) {
      if (t->end > data_size)
        fail(name_, data_start_ + t->begin,
             "tensor '" + t->name + "' ends at data offset " + std::to_string(t->end) +
                 ", past the end of the data (" + std::to_string(data_size) + " bytes)");
      if (t->begin < pos)
        fail(name_, data_start_ + t->begin,
             "tensor '" + t->name + "' overlaps the previous tensor (starts at data offset " +
                 std::to_string(t->begin) + ", previous ends at " + std::to_string(pos) + ")");
      if (t->begin > pos)
        fail(name_, data_start_ + pos,
             "hole in the data: bytes " + std::to_string(pos) + " to " + std::to_string(t->begin) +
                 " belong to no tensor");
      pos = t->end;
    }
    if (pos != data_size)
      fail(name_, data_start_ + pos,
           "the data has " + std::to_string(data_size - pos) +
               " trailing bytes that belong to no tensor (expected " + std::to_string(pos) +
               " data bytes, found " + std::to_string(data_size) + ")");
  }

  void read_metadata(const json::Value& v) {
    if (v.kind != json::Value::Kind::Object)
      fail(name_, v.offset, "__metadata__ must be an object of strings");
    for (const auto& kv : v.object) {
      if (kv.second.kind != json::Value::Kind::String)
        fail(name_, kv.second.offset, "__metadata__ value of '" + kv.first + "' must be a string");
      if (!metadata_.emplace(kv.first, kv.second.string).second)
        fail(name_, kv.second.offset, "duplicate __metadata__ key '" + kv.first + "'");
    }
  }

  // The checksum entry (if any): "crc32:" + 8 lowercase hex digits, written without escapes so
  // that its bytes in the file are known; verified unless opt.verify_checksum is false.
  void check_checksum(const json::Value* meta, const ReadOptions& opt) {
    if (!meta) return;
    const json::Value* value = nullptr;
    for (const auto& kv : meta->object)
      if (kv.first == checksum_key()) value = &kv.second;
    if (!value) return;
    const std::string& text = value->string;
    const std::uint64_t at = value->offset + 1;  // after the opening quote
    bool ok = text.size() == 14 && text.compare(0, 6, "crc32:") == 0 && at + 15 <= bytes_.size() &&
              std::memcmp(bytes_.data() + at, text.data(), text.size()) == 0 &&
              bytes_[at + 14] == '"';
    std::uint32_t stored = 0;
    for (std::size_t i = 6; ok && i < 14; ++i) {
      const char c = text[i];
      const int d = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
      ok = d >= 0;
      stored = (stored << 4) | std::uint32_t(d < 0 ? 0 : d);
    }
    if (!ok)
      fail(name_, value->offset,
           std::string("__metadata__ '") + checksum_key() +
               "' must be \"crc32:\" and 8 lowercase hex digits, found '" + text + "'");
    if (!opt.verify_checksum) {
      checksum_ = ChecksumState::NotVerified;
      return;
    }
    const std::uint64_t digits = at + 6;
    std::uint32_t crc = crc32_update(0, bytes_.data(), std::size_t(digits));
    crc = crc32_update(crc, "00000000", 8);
    crc = crc32_update(crc, bytes_.data() + digits + 8, std::size_t(bytes_.size() - digits - 8));
    if (crc != stored) {
      char b[96];
      std::snprintf(b, sizeof b, "the file says crc32:%08x, its content gives crc32:%08x",
                    unsigned(stored), unsigned(crc));
      fail(name_, digits,
           std::string("checksum mismatch: ") + b +
               " (the file was damaged or changed after it was written: a "
               "flipped bit, a truncated copy or an edit)");
    }
    checksum_ = ChecksumState::Verified;
  }

  TensorEntry read_entry(const std::string& name, const json::Value& v) const {
    using K = json::Value::Kind;
    if (v.kind != K::Object)
      fail(name_, v.offset, "entry of tensor '" + name + "' must be an object");
    TensorEntry t;
    t.name = name;
    const json::Value *dtype = nullptr, *shape = nullptr, *offs = nullptr;
    for (const auto& kv : v.object) {
      const json::Value** slot = kv.first == "dtype"          ? &dtype
                                 : kv.first == "shape"        ? &shape
                                 : kv.first == "data_offsets" ? &offs
                                                              : nullptr;
      if (!slot)
        fail(name_, kv.second.offset,
             "tensor '" + name + "': unexpected key '" + kv.first +
                 "' (expected dtype, shape, data_offsets)");
      if (*slot)
        fail(name_, kv.second.offset, "tensor '" + name + "': duplicate key '" + kv.first + "'");
      *slot = &kv.second;
    }
    if (!dtype || !shape || !offs)
      fail(name_, v.offset,
           "tensor '" + name + "' lacks " +
               (!dtype   ? "dtype"
                : !shape ? "shape"
                         : "data_offsets"));
    if (dtype->kind != K::String || !parse_dtype(dtype->string, t.dtype))
      fail(name_, dtype->offset,
           "tensor '" + name + "': unknown dtype " +
               (dtype->kind == K::String ? "'" + dtype->string + "'"
                                         : std::string("(not a string)")) +
               " (expected one of F64 F32 F16 BF16 I64 I32 I16 I8 U64 U32 "
               "U16 U8 BOOL)");
    if (shape->kind != K::Array)
      fail(name_, shape->offset, "tensor '" + name + "': shape must be an array");
    std::uint64_t numel = 1;
    for (const auto& d : shape->array) {
      if (d.kind != K::Number || !d.is_integer || d.integer < 0)
        fail(name_, d.offset, "tensor '" + name + "': shape entries must be non-negative integers");
      t.shape.push_back(d.integer);
      if (d.integer != 0 &&
          numel > std::numeric_limits<std::uint64_t>::max() / std::uint64_t(d.integer))
        fail(name_, d.offset, "tensor '" + name + "': element count overflows");
      numel *= std::uint64_t(d.integer);
    }
    if (offs->kind != K::Array || offs->array.size() != 2)
      fail(name_, offs->offset, "tensor '" + name + "': data_offsets must be [begin, end]");
    for (const auto& o : offs->array)
      if (o.kind != K::Number || !o.is_integer || o.integer < 0)
        fail(name_, o.offset, "tensor '" + name + "': data_offsets must be non-negative integers");
    t.begin = std::uint64_t(offs->array[0].integer);
    t.end = std::uint64_t(offs->array[1].integer);
    if (t.end < t.begin)
      fail(name_, offs->offset,
           "tensor '" + name + "': data_offsets end " + std::to_string(t.end) + " < begin " +
               std::to_string(t.begin));
    const std::uint64_t es = size_of(t.dtype);
    if (numel > std::numeric_limits<std::uint64_t>::max() / es || numel * es != t.end - t.begin)
      fail(name_, offs->offset,
           "tensor '" + name + "': shape " + shape_string(t.shape) + " of " + to_string(t.dtype) +
               " needs " +
               (numel > std::numeric_limits<std::uint64_t>::max() / es
                    ? std::string("more than 2^64")
                    : std::to_string(numel * es)) +
               " bytes, data_offsets span " + std::to_string(t.end - t.begin));
    return t;
  }

  std::string name_;
  std::vector<std::uint8_t> bytes_;
  std::uint64_t data_start_ = 0;
  std::vector<TensorEntry> tensors_;
  std::map<std::string, std::string> metadata_;
  ChecksumState checksum_ = ChecksumState::Absent;
};

/// Builds a safetensors file: tensors in insertion order, data contiguous, header padded with
/// spaces to a multiple of 8 bytes (as the reference writer does).
class SafetensorsWriter {
 public:
  /// Sets a `__metadata__` entry. The checksum key is reserved (use set_checksum); key and value
  /// must be UTF-8 (config_error otherwise).
  void set_metadata(const std::string& key, const std::string& value) {
    if (key == checksum_key())
      raise_config("SafetensorsWriter",
                   std::string("'") + checksum_key() + "' is reserved: call set_checksum(true)");
    if (!json::is_utf8(key) || !json::is_utf8(value))
      raise_config("SafetensorsWriter", "__metadata__ entry '" + key + "' is not valid UTF-8");
    metadata_[key] = value;
  }
  /// Adds the "flowprior.checksum" entry (a CRC-32 of the whole file, see checksum_key()), which
  /// Safetensors::parse verifies. Other safetensors readers ignore it.
  void set_checksum(bool on) { checksum_ = on; }

  /// Adds tensor `name` (non-empty, UTF-8, not yet added) with `shape`, converting data to `dtype`
  /// (F64, F32, F16 or BF16).
  template <class S>
  void add(const std::string& name, const S* data, std::vector<std::int64_t> shape, Dtype dtype) {
    if (name.empty() || name == "__metadata__")
      raise_config("SafetensorsWriter", "invalid tensor name '" + name + "'");
    // The reader (and every other safetensors reader) refuses a header that is not UTF-8.
    if (!json::is_utf8(name))
      raise_config("SafetensorsWriter", "tensor name '" + name + "' is not valid UTF-8");
    for (const auto& e : entries_)
      if (e.name == name) raise_config("SafetensorsWriter", "duplicate tensor name '" + name + "'");
    if (dtype != Dtype::F64 && dtype != Dtype::F32 && dtype != Dtype::F16 && dtype != Dtype::BF16)
      raise_config("SafetensorsWriter", std::string("cannot write dtype ") + to_string(dtype));
    TensorEntry t;
    t.name = name;
    t.dtype = dtype;
    t.shape = std::move(shape);
    for (auto s : t.shape)
      if (s < 0) raise_config("SafetensorsWriter", "negative dimension in tensor '" + name + "'");
    t.begin = data_.size();
    const std::uint64_t n = t.numel();
    const std::size_t es = size_of(dtype);
    data_.resize(data_.size() + std::size_t(n * es));
    std::uint8_t* p = data_.data() + t.begin;
    for (std::uint64_t i = 0; i < n; ++i, p += es) {
      const double v = static_cast<double>(data[i]);
      switch (dtype) {
        case Dtype::F64:
          std::memcpy(p, &v, 8);
          break;
        case Dtype::F32: {
          const float f = float(v);
          std::memcpy(p, &f, 4);
          break;
        }
        case Dtype::F16: {
          const std::uint16_t h = float_to_half(float(v));
          std::memcpy(p, &h, 2);
          break;
        }
        default: {
          const std::uint16_t h = float_to_bf16(float(v));
          std::memcpy(p, &h, 2);
          break;
        }
      }
    }
    t.end = data_.size();
    entries_.push_back(std::move(t));
  }
  template <class S>
  void add(const std::string& name, const S* data, std::vector<std::int64_t> shape) {
    add(name, data, std::move(shape), dtype_of<S>());
  }

  /// The whole file as bytes.
  std::vector<std::uint8_t> bytes() const {
    std::uint8_t len[8];
    const std::string header = final_header(len);
    std::vector<std::uint8_t> out(8 + header.size() + data_.size());
    std::memcpy(out.data(), len, 8);
    std::memcpy(out.data() + 8, header.data(), header.size());
    if (!data_.empty()) std::memcpy(out.data() + 8 + header.size(), data_.data(), data_.size());
    return out;
  }

  /// Writes the file atomically.
  void write(const std::string& path, WriteFaults faults = {}) const {
    std::uint8_t len[8];
    const std::string header = final_header(len);
    atomic_write(
        path,
        [&](Writer& w) {
          w.write(len, 8);
          w.write(header);
          w.write(data_.data(), data_.size());
        },
        faults);
  }

 private:
  // The header, its checksum digits filled in, and the 8-byte length prefix.
  std::string final_header(std::uint8_t len[8]) const {
    std::size_t digits = std::string::npos;
    std::string header = header_json(&digits);
    store_u64_le(header.size(), len);
    if (digits != std::string::npos) {  // CRC over the file with the digits as '0'
      std::uint32_t crc = crc32_update(0, len, 8);
      crc = crc32_update(crc, header.data(), header.size());
      crc = crc32_update(crc, data_.data(), data_.size());
      char b[9];
      std::snprintf(b, sizeof b, "%08x", unsigned(crc));
      header.replace(digits, 8, b);
    }
    return header;
  }

  std::string header_json(std::size_t* checksum_digits = nullptr) const {
    std::string h = "{";
    bool first = true;
    if (!metadata_.empty() || checksum_) {
      std::map<std::string, std::string> meta = metadata_;
      if (checksum_) meta[checksum_key()] = "crc32:00000000";
      h += "\"__metadata__\":{";
      for (auto it = meta.begin(); it != meta.end(); ++it) {
        h += (it == meta.begin() ? "" : ",") + json::quote(it->first) + ":";
        if (checksum_ && it->first == checksum_key() && checksum_digits)
          *checksum_digits = h.size() + 7;  // after the quote and "crc32:"
        h += json::quote(it->second);
      }
      h += "}";
      first = false;
    }
    for (const auto& t : entries_) {
      h += (first ? "" : ",") + json::quote(t.name) + ":{\"dtype\":\"" + to_string(t.dtype) +
           "\",\"shape\":[";
      for (std::size_t i = 0; i < t.shape.size(); ++i)
        h += (i ? "," : "") + std::to_string(t.shape[i]);
      h += "],\"data_offsets\":[" + std::to_string(t.begin) + "," + std::to_string(t.end) + "]}";
      first = false;
    }
    h += "}";
    while ((8 + h.size()) % 8 != 0) h += ' ';
    return h;
  }

  std::map<std::string, std::string> metadata_;
  std::vector<TensorEntry> entries_;
  std::vector<std::uint8_t> data_;
  bool checksum_ = false;
};

}  // namespace io
}  // namespace flowprior
