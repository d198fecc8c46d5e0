/// @file
/// ImageNet-style folders, root/<class>/<image> (docs/data.md "Image folders"): classes are the
/// sub-folders of root sorted by name (byte order, as torchvision's ImageFolder sorts Python
/// strings), labelled 0, 1, ... in that order; the samples of a class are the files directly in
/// its folder whose names end in .jpg, .jpeg or .png (any case), sorted by name.
///
/// Listing reads directory entries only: no image is opened and no file is stat'ed, so listing
/// 1.28 M files costs the directory reads. An entry that is not a readable image (a directory
/// named x.png, a broken link, a truncated file) is found when it is loaded, where the loader
/// skips and counts it. The index takes the names' bytes plus 12 bytes per file.
#pragma once

#include <algorithm>
#include <cctype>
#include <cstdint>
#include <filesystem>
#include <flowprior/core/error.hpp>
#include <flowprior/io/file.hpp>
#include <string>
#include <system_error>
#include <vector>

namespace flowprior {
namespace datasets {

/// Whether a file name ends in .jpg, .jpeg or .png, in any case.
inline bool is_image_name(const std::string& name) {
  auto ends_with = [&](const char* suffix) {
    const std::size_t n = std::char_traits<char>::length(suffix);
    if (name.size() <= n) return false;
    for (std::size_t i = 0; i < n; ++i)
      if (std::tolower(static_cast<unsigned char>(name[name.size() - n + i])) != suffix[i])
        return false;
    return true;
  };
  return ends_with(".jpg") || ends_with(".jpeg") || ends_with(".png");
}

/// The list of (image path, class) pairs of a folder; cheap to copy per sample it does not hold.
class ImageFolder {
 public:
  /// Lists `root`.
  /// @throws io_error naming the folder when it is missing or not a directory, cannot be read,
  ///         has no class sub-folder, or has a class folder without any image (torchvision
  ///         refuses those too); config_error above 2^32 - 1 images.
  static ImageFolder scan(const std::string& root) {
    namespace fs = std::filesystem;
    ImageFolder f;
    f.root_ = root;
    std::error_code ec;
    const fs::file_status st = fs::status(root, ec);
    if (ec || !fs::exists(st))
      io::fail(root, "cannot open the image folder: " +
                         (ec ? ec.message() : std::string("no such file or directory")));
    if (!fs::is_directory(st)) io::fail(root, "expected a folder of class folders, found a file");
    fs::directory_iterator it(root, ec), end;
    if (ec) io::fail(root, "cannot read the image folder: " + ec.message());
    for (; it != end; it.increment(ec)) {
      if (ec) break;
      std::error_code dec;
      if (it->is_directory(dec)) f.classes_.push_back(it->path().filename().string());
    }
    if (ec) io::fail(root, "cannot read the image folder: " + ec.message());
    std::sort(f.classes_.begin(), f.classes_.end());
    if (f.classes_.empty())
      io::fail(root, "expected class folders (root/<class>/<image>), found none");
    std::vector<std::string> names, empty;
    for (std::size_t c = 0; c < f.classes_.size(); ++c) {
      const std::string dir = root + "/" + f.classes_[c];
      names.clear();
      fs::directory_iterator ci(dir, ec);
      if (ec) io::fail(dir, "cannot read the class folder: " + ec.message());
      for (; ci != end; ci.increment(ec)) {
        if (ec) break;
        std::string n = ci->path().filename().string();
        if (is_image_name(n)) names.push_back(std::move(n));
      }
      if (ec) io::fail(dir, "cannot read the class folder: " + ec.message());
      if (names.empty()) empty.push_back(f.classes_[c]);
      std::sort(names.begin(), names.end());
      for (const std::string& n : names) {
        f.names_ += f.classes_[c];
        f.names_ += '/';
        f.names_ += n;
        f.ends_.push_back(f.names_.size());
        f.labels_.push_back(static_cast<std::uint32_t>(c));
      }
      if (f.labels_.size() > 0xffffffffu)
        ::flowprior::detail::raise<config_error>("[flowprior.config] ImageFolder: " + root +
                                                 " holds more than 2^32 - 1 images");
    }
    if (!empty.empty()) {
      std::string list;
      for (std::size_t i = 0; i < empty.size() && i < 5; ++i)
        list += (i ? ", '" : "'") + empty[i] + "'";
      if (empty.size() > 5) list += ", ...";
      io::fail(root, "expected .jpg, .jpeg or .png files in every class folder, found none in " +
                         std::to_string(empty.size()) + " of them (" + list + ")");
    }
    f.names_.shrink_to_fit();
    return f;
  }

  /// Number of images.
  std::size_t size() const { return labels_.size(); }
  /// The folder listed.
  const std::string& root() const { return root_; }
  /// Class names, sorted; label k is classes()[k].
  const std::vector<std::string>& classes() const { return classes_; }
  /// The class of image i (i < size()).
  int label(std::size_t i) const { return static_cast<int>(labels_[i]); }
  /// "<class>/<file>" of image i, relative to root.
  std::string relative_path(std::size_t i) const {
    const std::size_t b = i == 0 ? 0 : ends_[i - 1];
    return names_.substr(b, ends_[i] - b);
  }
  /// The path of image i: root + "/" + relative_path(i).
  std::string path(std::size_t i) const { return root_ + "/" + relative_path(i); }

 private:
  std::string root_;
  std::vector<std::string> classes_;
  std::string names_;                  // every "<class>/<file>", back to back
  std::vector<std::uint64_t> ends_;    // end of name i in names_
  std::vector<std::uint32_t> labels_;  // class of image i
};

}  // namespace datasets
}  // namespace flowprior
