/// @file
/// A small, strict JSON reader for file headers (safetensors), and string escaping for the
/// writers. Written for untrusted input: bounded nesting depth, no recursion beyond it, strings
/// of well-formed UTF-8 only, numbers within the double range, every error an io_error with the
/// byte offset in the file. Not a general-purpose JSON library; docs/formats.md says why it is
/// kept beside nlohmann::json (a differential test compares the two).
#pragma once

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <flowprior/io/file.hpp>
#include <limits>
#include <string>
#include <utility>
#include <vector>

namespace flowprior {
namespace io {
namespace json {

struct Value {
  enum class Kind { Null, Bool, Number, String, Array, Object };
  Kind kind = Kind::Null;
  bool boolean = false;
  bool is_integer = false;   ///< a number written without fraction or exponent that fits
  std::int64_t integer = 0;  ///< its value when is_integer
  double number = 0;
  std::string string;
  std::vector<Value> array;
  std::vector<std::pair<std::string, Value>> object;  ///< in file order
  std::uint64_t offset = 0;                           ///< byte offset of the value in the file
};

/// The length of the well-formed UTF-8 sequence that starts at p (p < e, *p >= 0x80), or 0 when
/// there is none. Well-formed as in RFC 3629: no overlong forms, no surrogates (U+D800..U+DFFF),
/// nothing above U+10FFFF, no truncated sequence.
inline std::size_t utf8_sequence_length(const char* p, const char* e) {
  const unsigned char lead = static_cast<unsigned char>(*p);
  std::size_t n = 0;
  unsigned char lo = 0x80, hi = 0xBF;  // the range of the first continuation byte
  if (lead >= 0xC2 && lead <= 0xDF) {
    n = 2;
  } else if (lead >= 0xE0 && lead <= 0xEF) {
    n = 3;
    if (lead == 0xE0) lo = 0xA0;
    if (lead == 0xED) hi = 0x9F;
  } else if (lead >= 0xF0 && lead <= 0xF4) {
    n = 4;
    if (lead == 0xF0) lo = 0x90;
    if (lead == 0xF4) hi = 0x8F;
  } else {
    return 0;
  }
  if (std::size_t(e - p) < n) return 0;
  for (std::size_t i = 1; i < n; ++i) {
    const unsigned char c = static_cast<unsigned char>(p[i]);
    if (c < lo || c > hi) return 0;
    lo = 0x80;
    hi = 0xBF;
  }
  return n;
}

/// True when s is well-formed UTF-8, which is what the reader accepts in a string. The writers
/// check names with it, so that every file they write reads back.
inline bool is_utf8(const std::string& s) {
  const char* p = s.data();
  const char* e = p + s.size();
  while (p != e) {
    if (static_cast<unsigned char>(*p) < 0x80) {
      ++p;
      continue;
    }
    const std::size_t n = utf8_sequence_length(p, e);
    if (n == 0) return false;
    p += n;
  }
  return true;
}

/// Parses text [begin, end) holding exactly one JSON value (whitespace around it allowed).
/// `base` is the file offset of `begin`, `file` names the file in errors.
class Reader {
 public:
  Reader(const char* begin, const char* end, std::uint64_t base, std::string file)
      : b_(begin), p_(begin), e_(end), base_(base), file_(std::move(file)) {}

  Value parse_document() {
    Value v = value(0);
    ws();
    if (p_ != e_) err("expected end of JSON text, found '" + show() + "'");
    return v;
  }

 private:
  static constexpr int kMaxDepth = 64;

  [[noreturn]] void err(const std::string& what) const {
    fail(file_, base_ + std::uint64_t(p_ - b_), "malformed JSON header: " + what);
  }
  std::string show() const {
    if (p_ >= e_) return "end of header";
    const unsigned char c = static_cast<unsigned char>(*p_);
    if (c < 0x20 || c >= 0x7f) return "byte 0x" + hex(c);
    return std::string(1, char(c));
  }
  static std::string hex(unsigned c) {
    const char* d = "0123456789abcdef";
    return std::string{d[(c >> 4) & 15], d[c & 15]};
  }
  void ws() {
    while (p_ != e_ && (*p_ == ' ' || *p_ == '\t' || *p_ == '\n' || *p_ == '\r')) ++p_;
  }
  void expect(char c) {
    ws();
    if (p_ == e_ || *p_ != c) err(std::string("expected '") + c + "', found '" + show() + "'");
    ++p_;
  }
  bool literal(const char* word) {
    const char* q = p_;
    for (const char* w = word; *w; ++w, ++q)
      if (q == e_ || *q != *w) return false;
    p_ = q;
    return true;
  }

  Value value(int depth) {
    if (depth > kMaxDepth) err("nesting deeper than 64 levels");
    ws();
    Value v;
    v.offset = base_ + std::uint64_t(p_ - b_);
    if (p_ == e_) err("expected a value, found end of header");
    const char c = *p_;
    if (c == '{') {
      v.kind = Value::Kind::Object;
      ++p_;
      ws();
      if (p_ != e_ && *p_ == '}') {
        ++p_;
        return v;
      }
      for (;;) {
        ws();
        if (p_ == e_ || *p_ != '"') err("expected a string key, found '" + show() + "'");
        std::string key = string();
        expect(':');
        v.object.emplace_back(std::move(key), value(depth + 1));
        ws();
        if (p_ != e_ && *p_ == ',') {
          ++p_;
          continue;
        }
        expect('}');
        return v;
      }
    }
    if (c == '[') {
      v.kind = Value::Kind::Array;
      ++p_;
      ws();
      if (p_ != e_ && *p_ == ']') {
        ++p_;
        return v;
      }
      for (;;) {
        v.array.push_back(value(depth + 1));
        ws();
        if (p_ != e_ && *p_ == ',') {
          ++p_;
          continue;
        }
        expect(']');
        return v;
      }
    }
    if (c == '"') {
      v.kind = Value::Kind::String;
      v.string = string();
      return v;
    }
    if (literal("true")) {
      v.kind = Value::Kind::Bool;
      v.boolean = true;
      return v;
    }
    if (literal("false")) {
      v.kind = Value::Kind::Bool;
      return v;
    }
    if (literal("null")) return v;
    if (c == '-' || (c >= '0' && c <= '9')) return number(v);
    err("expected a value, found '" + show() + "'");
  }

  Value number(Value v) {
    v.kind = Value::Kind::Number;
    const char* start = p_;
    bool neg = false;
    if (*p_ == '-') {
      neg = true;
      ++p_;
    }
    if (p_ == e_ || !(*p_ >= '0' && *p_ <= '9')) err("expected a digit, found '" + show() + "'");
    if (*p_ == '0' && p_ + 1 != e_ && p_[1] >= '0' && p_[1] <= '9') err("leading zero in number");
    std::uint64_t mag = 0;
    bool overflow = false;
    while (p_ != e_ && *p_ >= '0' && *p_ <= '9') {
      const unsigned dgt = unsigned(*p_ - '0');
      if (mag > (std::numeric_limits<std::uint64_t>::max() - dgt) / 10) overflow = true;
      if (!overflow) mag = mag * 10 + dgt;
      ++p_;
    }
    bool frac = false;
    if (p_ != e_ && *p_ == '.') {
      frac = true;
      ++p_;
      if (p_ == e_ || !(*p_ >= '0' && *p_ <= '9')) err("expected a digit after '.'");
      while (p_ != e_ && *p_ >= '0' && *p_ <= '9') ++p_;
    }
    if (p_ != e_ && (*p_ == 'e' || *p_ == 'E')) {
      frac = true;
      ++p_;
      if (p_ != e_ && (*p_ == '+' || *p_ == '-')) ++p_;
      if (p_ == e_ || !(*p_ >= '0' && *p_ <= '9')) err("expected a digit in the exponent");
      while (p_ != e_ && *p_ >= '0' && *p_ <= '9') ++p_;
    }
    const std::uint64_t lim = neg ? std::uint64_t(std::numeric_limits<std::int64_t>::max()) + 1
                                  : std::uint64_t(std::numeric_limits<std::int64_t>::max());
    if (!frac && !overflow && mag <= lim) {
      v.is_integer = true;
      v.integer = neg ? (mag == lim ? std::numeric_limits<std::int64_t>::min() : -std::int64_t(mag))
                      : std::int64_t(mag);
      v.number = double(v.integer);
    } else {
      v.number = std::strtod(std::string(start, p_).c_str(), nullptr);
      // A literal beyond the double range (1e400) has no value; refuse it, as JSON parsers
      // that store doubles do, rather than hand on an infinity.
      if (!std::isfinite(v.number)) {
        p_ = start;
        err("number out of the double range");
      }
    }
    return v;
  }

  std::string string() {
    ++p_;  // opening quote
    std::string s;
    for (;;) {
      if (p_ == e_) err("unterminated string");
      const unsigned char c = static_cast<unsigned char>(*p_);
      if (c == '"') {
        ++p_;
        return s;
      }
      if (c < 0x20) err("control character in string: '" + show() + "'");
      if (c >= 0x80) {
        const std::size_t n = utf8_sequence_length(p_, e_);
        if (n == 0) err("invalid UTF-8 sequence in string, starting with '" + show() + "'");
        s.append(p_, n);
        p_ += n;
        continue;
      }
      if (c != '\\') {
        s.push_back(char(c));
        ++p_;
        continue;
      }
      ++p_;
      if (p_ == e_) err("unterminated escape");
      const char x = *p_++;
      switch (x) {
        case '"':
          s.push_back('"');
          break;
        case '\\':
          s.push_back('\\');
          break;
        case '/':
          s.push_back('/');
          break;
        case 'b':
          s.push_back('\b');
          break;
        case 'f':
          s.push_back('\f');
          break;
        case 'n':
          s.push_back('\n');
          break;
        case 'r':
          s.push_back('\r');
          break;
        case 't':
          s.push_back('\t');
          break;
        case 'u': {
          std::uint32_t cp = hex4();
          if (cp >= 0xD800 && cp <= 0xDBFF) {  // surrogate pair
            if (!(p_ + 1 < e_ && p_[0] == '\\' && p_[1] == 'u')) err("unpaired surrogate");
            p_ += 2;
            const std::uint32_t lo = hex4();
            if (lo < 0xDC00 || lo > 0xDFFF) err("invalid low surrogate");
            cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
          } else if (cp >= 0xDC00 && cp <= 0xDFFF) {
            err("unpaired surrogate");
          }
          utf8(cp, s);
          break;
        }
        default:
          --p_;
          err("invalid escape '\\" + show() + "'");
      }
    }
  }
  std::uint32_t hex4() {
    std::uint32_t v = 0;
    for (int i = 0; i < 4; ++i) {
      if (p_ == e_) err("truncated \\u escape");
      const char c = *p_;
      std::uint32_t d;
      if (c >= '0' && c <= '9')
        d = std::uint32_t(c - '0');
      else if (c >= 'a' && c <= 'f')
        d = std::uint32_t(c - 'a' + 10);
      else if (c >= 'A' && c <= 'F')
        d = std::uint32_t(c - 'A' + 10);
      else
        err("invalid hex digit '" + show() + "' in \\u escape");
      v = v * 16 + d;
      ++p_;
    }
    return v;
  }
  static void utf8(std::uint32_t cp, std::string& s) {
    if (cp < 0x80) {
      s.push_back(char(cp));
    } else if (cp < 0x800) {
      s.push_back(char(0xC0 | (cp >> 6)));
      s.push_back(char(0x80 | (cp & 0x3F)));
    } else if (cp < 0x10000) {
      s.push_back(char(0xE0 | (cp >> 12)));
      s.push_back(char(0x80 | ((cp >> 6) & 0x3F)));
      s.push_back(char(0x80 | (cp & 0x3F)));
    } else {
      s.push_back(char(0xF0 | (cp >> 18)));
      s.push_back(char(0x80 | ((cp >> 12) & 0x3F)));
      s.push_back(char(0x80 | ((cp >> 6) & 0x3F)));
      s.push_back(char(0x80 | (cp & 0x3F)));
    }
  }

  const char* b_;
  const char* p_;
  const char* e_;
  std::uint64_t base_;
  std::string file_;
};

/// A JSON string literal for s (quotes included), escaping what JSON requires.
inline std::string quote(const std::string& s) {
  std::string o = "\"";
  for (const char ch : s) {
    const unsigned char c = static_cast<unsigned char>(ch);
    switch (c) {
      case '"':
        o += "\\\"";
        break;
      case '\\':
        o += "\\\\";
        break;
      case '\n':
        o += "\\n";
        break;
      case '\r':
        o += "\\r";
        break;
      case '\t':
        o += "\\t";
        break;
      case '\b':
        o += "\\b";
        break;
      case '\f':
        o += "\\f";
        break;
      default:
        if (c < 0x20) {
          const char* d = "0123456789abcdef";
          o += "\\u00";
          o.push_back(d[c >> 4]);
          o.push_back(d[c & 15]);
        } else {
          o.push_back(char(c));
        }
    }
  }
  return o + "\"";
}

}  // namespace json
}  // namespace io
}  // namespace flowprior
