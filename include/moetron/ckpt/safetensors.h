// safetensors <-> torch::Tensor: copy tensors out of a mapped file, load a whole file, and save
// tensors atomically in the reference implementation's exact byte layout.
#pragma once

#include <map>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <torch/torch.h>

#include "moetron/ckpt/safetensors_format.h"

namespace moetron::ckpt {

using NamedTensors = std::vector<std::pair<std::string, torch::Tensor>>;

// F8_E4M3 <-> Float8_e4m3fn, F8_E5M2 <-> Float8_e5m2; the rest map one to one.
torch::ScalarType to_torch_dtype(Dtype dtype);
// Throws (naming `what`) for torch dtypes safetensors cannot hold here (complex, uint16, ...).
Dtype from_torch_dtype(torch::ScalarType dtype, std::string_view what = "tensor");

// Copies one tensor out of the mapping into an owned, contiguous CPU tensor.
torch::Tensor read_tensor(const SafetensorsFile& file, std::string_view name);

// Every tensor of the file, by name.
std::map<std::string, torch::Tensor> load_safetensors(const std::string& path);

// Writes `tensors` (any device, any layout: copied to contiguous CPU) with `metadata` as
// __metadata__. Atomic: `path.tmp.<pid>`, fsync, rename over `path`, fsync the directory; on
// failure `path` keeps its previous contents. Throws on duplicate names or unsupported dtypes.
void save_safetensors(const std::string& path, const NamedTensors& tensors,
                      const std::map<std::string, std::string>& metadata = {});

}  // namespace moetron::ckpt
