// The torch face of the safetensors format: dtype mapping, read/load, atomic save.
#include "moetron/ckpt/safetensors.h"

#include <cstring>

#include "moetron/core/error.h"
#include "moetron/core/files.h"

namespace moetron::ckpt {

torch::ScalarType to_torch_dtype(Dtype dtype) {
  switch (dtype) {
    case Dtype::kF64:
      return torch::kFloat64;
    case Dtype::kF32:
      return torch::kFloat32;
    case Dtype::kF16:
      return torch::kFloat16;
    case Dtype::kBF16:
      return torch::kBFloat16;
    case Dtype::kF8E4M3:
      return torch::kFloat8_e4m3fn;
    case Dtype::kF8E5M2:
      return torch::kFloat8_e5m2;
    case Dtype::kI64:
      return torch::kInt64;
    case Dtype::kI32:
      return torch::kInt32;
    case Dtype::kI16:
      return torch::kInt16;
    case Dtype::kI8:
      return torch::kInt8;
    case Dtype::kU8:
      return torch::kUInt8;
    case Dtype::kBool:
      return torch::kBool;
  }
  throw Error(str_cat("internal: unmapped dtype ", static_cast<int>(dtype)));
}

Dtype from_torch_dtype(torch::ScalarType dtype, std::string_view what) {
  switch (dtype) {
    case torch::kFloat64:
      return Dtype::kF64;
    case torch::kFloat32:
      return Dtype::kF32;
    case torch::kFloat16:
      return Dtype::kF16;
    case torch::kBFloat16:
      return Dtype::kBF16;
    case torch::kFloat8_e4m3fn:
      return Dtype::kF8E4M3;
    case torch::kFloat8_e5m2:
      return Dtype::kF8E5M2;
    case torch::kInt64:
      return Dtype::kI64;
    case torch::kInt32:
      return Dtype::kI32;
    case torch::kInt16:
      return Dtype::kI16;
    case torch::kInt8:
      return Dtype::kI8;
    case torch::kUInt8:
      return Dtype::kU8;
    case torch::kBool:
      return Dtype::kBool;
    default:
      break;
  }
  throw Error(str_cat(what, ": torch dtype ", c10::toString(dtype),
                      " cannot be stored in safetensors; supported: ", supported_dtype_names()));
}

torch::Tensor read_tensor(const SafetensorsFile& file, std::string_view name) {
  const TensorInfo& info = file.info(name);
  const ByteSpan span = file.bytes(name);
  // BOOL bytes other than 0/1 would be undefined in a torch bool tensor: read as U8, then
  // compare, so a malformed file can only give true/false.
  const bool is_bool = info.dtype == Dtype::kBool;
  auto out = torch::empty(info.shape, torch::TensorOptions().dtype(
                                          is_bool ? torch::kUInt8 : to_torch_dtype(info.dtype)));
  MOETRON_CHECK(static_cast<uint64_t>(out.nbytes()) == span.size, file.path(), ": tensor '", name,
                "': expected ", out.nbytes(), " bytes, span has ", span.size);
  if (span.size > 0) std::memcpy(out.data_ptr(), span.data, span.size);
  return is_bool ? out.ne(0) : out;
}

std::map<std::string, torch::Tensor> load_safetensors(const std::string& path) {
  const auto file = SafetensorsFile::open(path);
  std::map<std::string, torch::Tensor> out;
  for (const auto& t : file.header().tensors) out.emplace(t.name, read_tensor(file, t.name));
  return out;
}

void save_safetensors(const std::string& path, const NamedTensors& tensors,
                      const std::map<std::string, std::string>& metadata) {
  std::vector<TensorEntry> entries;
  std::vector<torch::Tensor> data;
  entries.reserve(tensors.size());
  data.reserve(tensors.size());
  for (const auto& [name, tensor] : tensors) {
    MOETRON_CHECK(tensor.defined(), path, ": tensor '", name, "' is undefined");
    MOETRON_CHECK(tensor.layout() == torch::kStrided, path, ": tensor '", name,
                  "' must be dense (strided), got layout ", tensor.layout());
    const Dtype dtype =
        from_torch_dtype(tensor.scalar_type(), str_cat(path, ": tensor '", name, "'"));
    entries.push_back(TensorEntry{name, dtype, tensor.sizes().vec()});
    data.push_back(tensor.detach().to(torch::kCPU).contiguous());
  }
  const EncodedHeader header = encode_safetensors_header(entries, metadata, path);

  AtomicFileWriter writer(path);
  writer.write(header.bytes);
  for (size_t k = 0; k < header.order.size(); ++k) {
    const torch::Tensor& t = data[header.order[k]];
    MOETRON_CHECK(static_cast<uint64_t>(t.nbytes()) == header.layout[k].nbytes(), path,
                  ": tensor '", header.layout[k].name, "': expected ", header.layout[k].nbytes(),
                  " bytes, tensor has ", t.nbytes());
    if (t.nbytes() > 0) writer.write(t.data_ptr(), t.nbytes());
  }
  writer.commit();
}

}  // namespace moetron::ckpt
