// The one PYBIND11_MODULE of the extension: runs every LLR_REGISTER_OPS function (see registry.h).
#include "registry.h"

#define LLR_STRINGIFY_(x) #x
#define LLR_STRINGIFY(x) LLR_STRINGIFY_(x)

namespace llr {

std::vector<Registrar>& registrars() {
  static std::vector<Registrar> all;
  return all;
}

}  // namespace llr

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "llr_kernels C++/CUDA extension";
#ifdef LLR_WITH_CUDA
  m.attr("with_cuda") = true;
#else
  m.attr("with_cuda") = false;
#endif
#ifdef LLR_SOURCE_DIGEST  // digest of the sources and flags (llr_kernels/_ext.py): recognises a stale prebuilt module
  m.attr("source_digest") = LLR_STRINGIFY(LLR_SOURCE_DIGEST);
#endif
  for (auto reg : llr::registrars()) reg(m);
}
