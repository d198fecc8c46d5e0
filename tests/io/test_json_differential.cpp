// Differential test of the safetensors header reader (include/flowprior/io/json.hpp) against
// nlohmann::json (Debian nlohmann-json3-dev, fuzzed upstream for years), docs/formats.md "JSON".
//
// Inputs: every file of the committed fuzz corpora (tests/fuzz/corpus/), whole and as the header
// slice the safetensors reader would see, hand-written hostile texts, and seeded random mutations
// of a valid header. Each input goes through both parsers, and the test asserts:
//   - whatever nlohmann::json rejects, our reader rejects too, with an io_error naming a byte
//     offset ("at byte N");
//   - where both accept, the documents agree: kinds, numbers bit for bit (a double) or exactly
//     (an integer), strings byte for byte, object keys in file order;
//   - where only nlohmann::json accepts, the case is one of the documented ones (our reader is
//     stricter on purpose): nesting deeper than 64 levels, a leading UTF-8 byte order mark, and
//     anything after a NUL byte that follows a complete value (nlohmann::json's lexer takes a NUL
//     byte for the end of the input and ignores the rest; our reader calls it trailing data).
// Duplicate object keys are accepted by both at this level: nlohmann::json keeps the last value
// in the place of the first key, our reader keeps every pair so that the safetensors layer can
// refuse them (the comparison folds our pairs the way nlohmann::json does and counts the cases).
// The tallies are printed (run `test_io "[json-diff]"`); docs/formats.md quotes them.
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <flowprior/io/file.hpp>
#include <flowprior/io/json.hpp>
#include <flowprior/io/safetensors.hpp>
#include <map>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <vector>

#include "catch.hpp"

namespace {

namespace fj = flowprior::io::json;
using Ordered = nlohmann::ordered_json;

struct Tally {
  std::size_t inputs = 0;
  std::size_t both_reject = 0;
  std::size_t both_accept = 0;
  std::size_t duplicate_keys = 0;           // both accept; nlohmann::json silently keeps the last
  std::size_t unsigned_above_int64 = 0;     // both accept; nlohmann::json exact, ours a double
  std::size_t stricter_depth = 0;           // only nlohmann::json accepts: deeper than 64 levels
  std::size_t stricter_bom = 0;             // only nlohmann::json accepts: a byte order mark
  std::size_t stricter_nul = 0;             // only nlohmann::json accepts: it stops at a NUL
  std::vector<std::string> stricter_other;  // only nlohmann::json accepts, for another reason
  std::vector<std::string> looser;          // only our reader accepts (must stay empty)
  std::vector<std::string> disagree;        // both accept, different documents (must stay empty)
  std::vector<std::string> no_offset;       // our io_error without a byte offset (must stay empty)
};

std::string preview(const std::string& s) {
  std::string o;
  for (std::size_t i = 0; i < s.size() && i < 60; ++i) {
    const unsigned char c = static_cast<unsigned char>(s[i]);
    if (c >= 0x20 && c < 0x7f) {
      o.push_back(char(c));
    } else {
      char b[8];
      std::snprintf(b, sizeof b, "\\x%02x", c);
      o += b;
    }
  }
  return s.size() > 60 ? o + "... (" + std::to_string(s.size()) + " bytes)" : o;
}

bool has_duplicates(const fj::Value& v) {
  if (v.kind == fj::Value::Kind::Array) {
    for (const auto& x : v.array)
      if (has_duplicates(x)) return true;
  } else if (v.kind == fj::Value::Kind::Object) {
    std::map<std::string, int> seen;
    for (const auto& kv : v.object) {
      if (++seen[kv.first] > 1) return true;
      if (has_duplicates(kv.second)) return true;
    }
  }
  return false;
}

// Compares our document with nlohmann::json's; on a difference, `why` says where. Our object
// pairs are folded as nlohmann::json folds duplicate keys: the first key's place, the last value.
bool same(const fj::Value& a, const Ordered& b, std::string& why, Tally& t,
          const std::string& at = "$") {
  using K = fj::Value::Kind;
  switch (a.kind) {
    case K::Null:
      if (!b.is_null()) return why = at + ": null vs " + b.type_name(), false;
      return true;
    case K::Bool:
      if (!b.is_boolean() || b.get<bool>() != a.boolean) return why = at + ": bool", false;
      return true;
    case K::String:
      if (!b.is_string() || b.get_ref<const std::string&>() != a.string)
        return why = at + ": string", false;
      return true;
    case K::Number: {
      if (a.is_integer) {
        if (b.is_number_integer() && !b.is_number_unsigned() && b.get<std::int64_t>() == a.integer)
          return true;
        if (b.is_number_unsigned() && a.integer >= 0 &&
            b.get<std::uint64_t>() == std::uint64_t(a.integer))
          return true;
        return why = at + ": integer " + std::to_string(a.integer) + " vs " + b.dump(), false;
      }
      if (b.is_number_unsigned()) {
        // Integers in (2^63 - 1, 2^64): nlohmann::json keeps them exactly, our reader as the
        // correctly rounded double (strtod), which must be the rounding of nlohmann's value.
        ++t.unsigned_above_int64;
        if (double(b.get<std::uint64_t>()) == a.number) return true;
        return why = at + ": unsigned " + b.dump(), false;
      }
      if (!b.is_number_float()) return why = at + ": number vs " + b.type_name(), false;
      const double x = b.get<double>();
      if (std::memcmp(&x, &a.number, sizeof x) != 0)
        return why = at + ": double " + b.dump() + " differs in its bits", false;
      return true;
    }
    case K::Array:
      if (!b.is_array() || b.size() != a.array.size()) return why = at + ": array", false;
      for (std::size_t i = 0; i < a.array.size(); ++i)
        if (!same(a.array[i], b[i], why, t, at + "[" + std::to_string(i) + "]")) return false;
      return true;
    case K::Object: {
      if (!b.is_object()) return why = at + ": object vs " + b.type_name(), false;
      std::vector<std::pair<std::string, const fj::Value*>> folded;
      for (const auto& kv : a.object) {
        bool found = false;
        for (auto& f : folded)
          if (f.first == kv.first) {
            f.second = &kv.second;
            found = true;
          }
        if (!found) folded.emplace_back(kv.first, &kv.second);
      }
      if (folded.size() != b.size()) return why = at + ": object size", false;
      std::size_t i = 0;
      for (auto it = b.begin(); it != b.end(); ++it, ++i) {
        if (it.key() != folded[i].first) return why = at + ": key order or bytes", false;
        if (!same(*folded[i].second, it.value(), why, t, at + "." + it.key())) return false;
      }
      return true;
    }
  }
  return why = at + ": unknown kind", false;
}

void check(const std::string& text, Tally& t) {
  ++t.inputs;
  const Ordered theirs = Ordered::parse(text.begin(), text.end(), nullptr, false);
  const bool they_accept = !theirs.is_discarded();
  fj::Value ours;
  bool we_accept = true;
  std::string our_error;
  try {
    fj::Reader reader(text.data(), text.data() + text.size(), 0, "differential.json");
    ours = reader.parse_document();
  } catch (const flowprior::io_error& e) {
    we_accept = false;
    our_error = e.what();
    if (our_error.find(" at byte ") == std::string::npos) t.no_offset.push_back(our_error);
  }
  if (!we_accept && !they_accept) {
    ++t.both_reject;
  } else if (we_accept && !they_accept) {
    t.looser.push_back(preview(text));
  } else if (!we_accept) {
    if (our_error.find("nesting deeper than 64 levels") != std::string::npos)
      ++t.stricter_depth;
    else if (text.compare(0, 3, "\xEF\xBB\xBF") == 0)
      ++t.stricter_bom;
    else if (our_error.find("expected end of JSON text, found 'byte 0x00'") != std::string::npos)
      ++t.stricter_nul;
    else
      t.stricter_other.push_back(preview(text) + " -> " + our_error);
  } else {
    ++t.both_accept;
    if (has_duplicates(ours)) ++t.duplicate_keys;
    std::string why;
    if (!same(ours, theirs, why, t)) t.disagree.push_back(preview(text) + ": " + why);
  }
}

// Each corpus file whole, and the slice a safetensors reader takes as its header: from byte 8,
// up to the declared length when the file holds it, else to the end.
std::size_t add_corpus(const std::string& format, Tally& t) {
  const std::filesystem::path dir =
      std::filesystem::path(FLOWPRIOR_TEST_SOURCE_DIR) / "fuzz" / "corpus" / format;
  std::size_t files = 0;
  for (const auto& e : std::filesystem::directory_iterator(dir)) {
    if (!e.is_regular_file()) continue;
    const auto bytes = flowprior::io::read_file(e.path().string());
    const std::string all(bytes.begin(), bytes.end());
    check(all, t);
    if (all.size() > 8) {
      std::uint64_t n = 0;
      for (int i = 7; i >= 0; --i) n = (n << 8) | static_cast<unsigned char>(all[std::size_t(i)]);
      const std::size_t len = n <= all.size() - 8 ? std::size_t(n) : all.size() - 8;
      check(all.substr(8, len), t);
    }
    ++files;
  }
  return files;
}

std::vector<std::string> hostile() {
  using namespace std::string_literals;
  std::vector<std::string> v = {
      // Empty, whitespace, structure and trailing garbage.
      "",
      " ",
      "{}",
      "[]",
      " {} ",
      "\t\r\n{}\n",
      "\f{}",
      "\v{}",
      "\xC2\xA0{}",
      "{} x",
      "{}{}",
      "1 2",
      "[1,]",
      "[,1]",
      "{\"a\":1,}",
      "{,}",
      "[1 2]",
      "{\"a\" 1}",
      "{\"a\":}",
      "{a:1}",
      "{'a':1}",
      "'a'",
      "[",
      "]",
      "{",
      "}",
      "{\"a\":1",
      "[1,2",
      "\"abc",
      "tru",
      "True",
      "nulll",
      "nul",
      "falsey",
      "[true,false,null]",
      "{\"a\":[{}],\"b\":{\"c\":[[]]}}",
      "/* c */{}",
      "{}// c",
      "{\"a\":1}\x1a",
      // NUL bytes.
      "\0"s,
      "{}\0"s,
      "\"a\0b\""s,
      "{\"a\0\":1}"s,
      "[1,\0 2]"s,
      "\"\\u0000\""s,
      // Numbers.
      "0",
      "-0",
      "-0.0",
      "0.0",
      "0e0",
      "-0e-0",
      "01",
      "-01",
      "00",
      "1.",
      ".5",
      "-.5",
      "+1",
      "-",
      "--1",
      "1e",
      "1e+",
      "1E-",
      "1e5",
      "1E+2",
      "1.5e-3",
      "0x10",
      "Infinity",
      "-Infinity",
      "NaN",
      "1e400",
      "-1e400",
      "1e308",
      "1.7976931348623157e308",
      "1.7976931348623159e308",
      "4.9e-324",
      "2.4e-324",
      "1e-400",
      "-1e-400",
      "0.1",
      "0.30000000000000004",
      "9223372036854775807",
      "9223372036854775808",
      "-9223372036854775808",
      "-9223372036854775809",
      "18446744073709551615",
      "18446744073709551616",
      "-18446744073709551616",
      "123456789012345678901234567890",
      "1_000",
      "1,5",
      "١",
      "[1e400]",
      "{\"a\":-1e400}",
      // Strings: escapes, surrogates, UTF-8.
      "\"\\\"\\\\\\/\\b\\f\\n\\r\\t\"",
      "\"\\x41\"",
      "\"\\U0041\"",
      "\"\\u12\"",
      "\"\\u12G4\"",
      "\"\\u0041\\u00e9\\u20ac\"",
      "\"\\ud83d\\ude00\"",
      "\"\\uD83D\\uDE00\"",
      "\"\\ud800\"",
      "\"\\udc00\"",
      "\"\\ud800\\u0041\"",
      "\"\\ud800\\ud800\"",
      "\"\\ud800x\"",
      "\"\\udfff\"",
      "\"\\'\"",
      "\"\\a\"",
      "\"\\",
      "\"\x01\"",
      "\"\x1f\"",
      "\"\x7f\"",
      "\"\t\"",
      "\"\n\"",
      "\"\xe2\x82\xac\"",
      "\"\xf0\x9f\x98\x80\"",
      "\"\xc3\xa9\"",
      "\"\xff\"",
      "\"\xfe\"",
      "\"\x80\"",
      "\"\xbf\"",
      "\"\xc0\x80\"",
      "\"\xc1\xbf\"",
      "\"\xe0\x80\x80\"",
      "\"\xe0\x9f\xbf\"",
      "\"\xed\xa0\x80\"",
      "\"\xed\xbf\xbf\"",
      "\"\xf0\x80\x80\x80\"",
      "\"\xf0\x8f\xbf\xbf\"",
      "\"\xf4\x90\x80\x80\"",
      "\"\xf5\x80\x80\x80\"",
      "\"\xf8\x88\x80\x80\x80\"",
      "\"\xe2\x82\"",
      "\"\xe2\"",
      "\"\xf0\x9f\x98\"",
      "\"\xc3\"",
      "\"\xc3\xc3\"",
      "\"\xe2\x82\xac\xe2\"",
      "\xff",
      "\xef\xbb\xbf{}",
      "\xef\xbb\xbf",
      "\xef\xbb{}",
      "{\"\xff\":1}",
      "{\"\xe2\x82\xac\":1}",
      // Duplicate keys.
      "{\"a\":1,\"a\":2}",
      "{\"a\":{\"b\":1},\"c\":0,\"a\":[2]}",
      "{\"__metadata__\":{\"x\":\"1\",\"x\":\"2\"}}",
      "[{\"k\":1,\"k\":1}]",
      // A safetensors header.
      "{\"__metadata__\":{\"format\":\"pt\"},\"w\":{\"dtype\":\"F32\",\"shape\":[2,3],"
      "\"data_offsets\":[0,24]}}",
  };
  // Nesting: at our limit, just past it, and 1e5 levels of arrays and objects.
  auto nest = [](const std::string& open, const std::string& inner, const std::string& close,
                 std::size_t n) {
    std::string s;
    for (std::size_t i = 0; i < n; ++i) s += open;
    s += inner;
    for (std::size_t i = 0; i < n; ++i) s += close;
    return s;
  };
  for (std::size_t n : {64u, 65u, 66u, 100000u}) {
    v.push_back(nest("[", "1", "]", n));
    v.push_back(nest("{\"a\":", "1", "}", n));
  }
  v.push_back(std::string(100000, '['));                  // deep and unterminated
  v.push_back("\"" + std::string(1 << 20, 'a') + "\"");   // a 1 MiB string
  v.push_back("\"" + std::string(1 << 16, '\\') + "\"");  // an odd run of backslashes
  v.push_back(std::string(1000, '7'));                    // a 1000-digit integer
  v.push_back("0." + std::string(1000, '3') + "e-5");     // a 1000-digit fraction
  v.push_back("1e" + std::string(400, '9'));              // a huge exponent
  v.push_back("1e-" + std::string(400, '9'));             // a tiny one
  std::string wide = "[";
  for (int i = 0; i < 100000; ++i) wide += (i ? ",0" : "0");
  v.push_back(wide + "]");  // 1e5 elements
  return v;
}

void print(const char* what, const Tally& t) {
  std::printf(
      "json differential (%s): %zu inputs, both reject %zu, both accept %zu (duplicate keys "
      "%zu, unsigned above int64 %zu), only nlohmann accepts %zu (depth %zu, BOM %zu, after NUL "
      "%zu, other %zu), only ours accepts %zu, disagreements %zu\n",
      what, t.inputs, t.both_reject, t.both_accept, t.duplicate_keys, t.unsigned_above_int64,
      t.stricter_depth + t.stricter_bom + t.stricter_nul + t.stricter_other.size(),
      t.stricter_depth, t.stricter_bom, t.stricter_nul, t.stricter_other.size(), t.looser.size(),
      t.disagree.size());
}

void require_clean(const Tally& t) {
  // Every finding is listed before the first assertion that fails.
  for (const auto& s : t.looser) std::printf("  only our reader accepts: %s\n", s.c_str());
  for (const auto& s : t.disagree) std::printf("  documents differ: %s\n", s.c_str());
  for (const auto& s : t.stricter_other) std::printf("  only nlohmann accepts: %s\n", s.c_str());
  for (const auto& s : t.no_offset) std::printf("  io_error without offset: %s\n", s.c_str());
  REQUIRE(t.looser.empty());
  REQUIRE(t.disagree.empty());
  REQUIRE(t.stricter_other.empty());
  REQUIRE(t.no_offset.empty());
}

}  // namespace

TEST_CASE("json differential: the fuzz corpora through both parsers", "[io][json-diff]") {
  Tally t;
  const std::size_t st = add_corpus("safetensors", t);
  const std::size_t npy = add_corpus("npy", t);
  std::printf("json differential: %zu safetensors and %zu npy corpus files\n", st, npy);
  print("corpora", t);
  REQUIRE(st >= 3);
  REQUIRE(npy >= 3);
  REQUIRE(t.both_accept > 0);
  require_clean(t);
}

TEST_CASE("json differential: hostile headers through both parsers", "[io][json-diff]") {
  Tally t;
  for (const auto& s : hostile()) check(s, t);
  print("hostile", t);
  require_clean(t);
  // The cases our reader is stricter on were all met.
  REQUIRE(t.stricter_depth >= 4);
  REQUIRE(t.stricter_bom == 1);
  REQUIRE(t.stricter_nul >= 1);
  REQUIRE(t.duplicate_keys == 4);
}

TEST_CASE("json differential: seeded mutations of a header through both parsers",
          "[io][json-diff]") {
  const std::string base =
      "{\"__metadata__\":{\"format\":\"pt\",\"k\":\"\\u00e9\\ud83d\\ude00\xe2\x82\xac\"},"
      "\"w\":{\"dtype\":\"F32\",\"shape\":[2,3],\"data_offsets\":[0,24]},"
      "\"b\":{\"dtype\":\"F64\",\"shape\":[],\"data_offsets\":[24,32]},\"x\":[-0.5e3,1E-2,true,"
      "false,null,[],{}]}";
  using namespace std::string_literals;
  const std::string alphabet = "{}[]\",:.-+eE0123456789 \\/u\xe2\x82\xac\xff\xed\xa0\x80\0tfn"s;
  std::mt19937 rng(20261130);
  Tally t;
  for (int i = 0; i < 20000; ++i) {
    std::string s = base;
    const int edits = 1 + int(rng() % 4);
    for (int k = 0; k < edits && !s.empty(); ++k) {
      const std::size_t at = rng() % s.size();
      const char c = alphabet[rng() % alphabet.size()];
      switch (rng() % 3) {
        case 0:
          s[at] = c;
          break;
        case 1:
          s.insert(s.begin() + std::ptrdiff_t(at), c);
          break;
        default:
          s.erase(at, 1);
          break;
      }
    }
    check(s, t);
  }
  print("mutations", t);
  require_clean(t);
  REQUIRE(t.both_accept > 100);
  REQUIRE(t.both_reject > 100);
}

TEST_CASE("json differential: duplicate keys that both parsers accept are refused by safetensors",
          "[io][json-diff]") {
  // nlohmann::json would keep the last of two tensors named alike; our reader keeps both pairs
  // and Safetensors::parse refuses them, naming the offset.
  const std::string header =
      "{\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
      "\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}";
  std::vector<std::uint8_t> file(8);
  for (int i = 0; i < 8; ++i) file[std::size_t(i)] = std::uint8_t(header.size() >> (8 * i));
  file.insert(file.end(), header.begin(), header.end());
  file.insert(file.end(), 4, 0);
  REQUIRE(Ordered::parse(header).size() == 1);
  REQUIRE_THROWS_WITH(flowprior::io::Safetensors::parse(file, "dup.safetensors"),
                      Catch::Contains("at byte") && Catch::Contains("duplicate tensor name"));
}
