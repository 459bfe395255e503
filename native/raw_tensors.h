// Named tensors in one file of raw bytes (LEPTONT1): the format lepton_compile/rawtensors.py
// documents and writes. Little-endian throughout:
//   "LEPTONT1", u32 count, then per tensor: u32 name_len, name, u8 dtype code, u8 ndim,
//   i64 dims[ndim], u64 nbytes, data (C order).
#pragma once

#include <ATen/Tensor.h>

#include <string>
#include <utility>
#include <vector>

namespace lepton {

using NamedTensors = std::vector<std::pair<std::string, at::Tensor>>;

// The tensors in `path`, as CPU tensors; throws std::runtime_error naming the file.
NamedTensors read_tensors(const std::string& path);

// Writes `tensors` (moved to the CPU, made contiguous) to `path`.
void write_tensors(const std::string& path, const NamedTensors& tensors);

// "float32", "float16", ... (the names the Python side uses).
std::string dtype_name(at::ScalarType type);

}  // namespace lepton
