// Reader and writer of LEPTONT1 tensor files (see raw_tensors.h). We wrote our own rather
// than reading .npz: a zip reader is more code than the whole format, and the runner's
// inputs only need names, element types, shapes and bytes.
#include "raw_tensors.h"

#include <ATen/ATen.h>

#include <cstdint>
#include <cstring>
#include <fstream>
#include <stdexcept>

namespace lepton {
namespace {

constexpr char kMagic[8] = {'L', 'E', 'P', 'T', 'O', 'N', 'T', '1'};

struct Code {
  uint8_t code;
  at::ScalarType type;
  const char* name;
};

// Must match DTYPE_CODES in lepton_compile/rawtensors.py.
constexpr Code kCodes[] = {
    {1, at::kFloat, "float32"}, {2, at::kHalf, "float16"},  {3, at::kBFloat16, "bfloat16"},
    {4, at::kDouble, "float64"}, {5, at::kChar, "int8"},    {6, at::kByte, "uint8"},
    {7, at::kShort, "int16"},   {8, at::kInt, "int32"},     {9, at::kLong, "int64"},
    {10, at::kBool, "bool"},
};

class Reader {
 public:
  explicit Reader(const std::string& path) : path_(path), in_(path, std::ios::binary) {
    if (!in_) throw std::runtime_error(path + ": cannot open");
  }
  void read(void* dst, size_t n) {
    in_.read(static_cast<char*>(dst), static_cast<std::streamsize>(n));
    if (static_cast<size_t>(in_.gcount()) != n) {
      throw std::runtime_error(path_ + ": truncated tensor file");
    }
  }
  template <typename T>
  T value() {
    T v;
    read(&v, sizeof(T));  // the format is little-endian, as every machine we build for
    return v;
  }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
  std::ifstream in_;
};

}  // namespace

std::string dtype_name(at::ScalarType type) {
  for (const auto& c : kCodes) {
    if (c.type == type) return c.name;
  }
  return c10::toString(type);
}

NamedTensors read_tensors(const std::string& path) {
  Reader r(path);
  char magic[8];
  r.read(magic, sizeof magic);
  if (std::memcmp(magic, kMagic, sizeof magic) != 0) {
    throw std::runtime_error(path + ": not a tensor file (no LEPTONT1 header)");
  }
  const auto count = r.value<uint32_t>();
  NamedTensors out;
  for (uint32_t i = 0; i < count; ++i) {
    std::string name(r.value<uint32_t>(), '\0');
    r.read(name.data(), name.size());
    const auto code = r.value<uint8_t>();
    const auto ndim = r.value<uint8_t>();
    const Code* found = nullptr;
    for (const auto& c : kCodes) {
      if (c.code == code) found = &c;
    }
    if (found == nullptr) {
      throw std::runtime_error(path + ": tensor '" + name + "' has unknown dtype code " +
                               std::to_string(code));
    }
    std::vector<int64_t> shape(ndim);
    for (auto& d : shape) d = r.value<int64_t>();
    const auto nbytes = r.value<uint64_t>();
    at::Tensor t = at::empty(shape, at::TensorOptions().dtype(found->type));
    if (nbytes != t.nbytes()) {
      throw std::runtime_error(path + ": tensor '" + name + "': " + std::to_string(nbytes) +
                               " bytes do not fit its shape");
    }
    r.read(t.data_ptr(), nbytes);
    out.emplace_back(std::move(name), std::move(t));
  }
  return out;
}

void write_tensors(const std::string& path, const NamedTensors& tensors) {
  const std::string tmp = path + ".tmp";
  {
    std::ofstream f(tmp, std::ios::binary);
    if (!f) throw std::runtime_error(path + ": cannot write");
    auto put = [&f](const void* p, size_t n) {
      f.write(static_cast<const char*>(p), static_cast<std::streamsize>(n));
    };
    put(kMagic, sizeof kMagic);
    const auto count = static_cast<uint32_t>(tensors.size());
    put(&count, sizeof count);
    for (const auto& [name, value] : tensors) {
      const at::Tensor t = value.cpu().contiguous();
      const Code* found = nullptr;
      for (const auto& c : kCodes) {
        if (c.type == t.scalar_type()) found = &c;
      }
      if (found == nullptr) {
        throw std::runtime_error("output '" + name + "': element type " +
                                 std::string(c10::toString(t.scalar_type())) +
                                 " has no code in the tensor format");
      }
      const auto name_len = static_cast<uint32_t>(name.size());
      put(&name_len, sizeof name_len);
      put(name.data(), name.size());
      const auto ndim = static_cast<uint8_t>(t.dim());
      put(&found->code, 1);
      put(&ndim, 1);
      for (int64_t d : t.sizes()) put(&d, sizeof d);
      const auto nbytes = static_cast<uint64_t>(t.nbytes());
      put(&nbytes, sizeof nbytes);
      put(t.data_ptr(), nbytes);
    }
    if (!f) throw std::runtime_error(path + ": write failed");
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    std::remove(tmp.c_str());
    throw std::runtime_error(path + ": cannot rename the written file into place");
  }
}

}  // namespace lepton
