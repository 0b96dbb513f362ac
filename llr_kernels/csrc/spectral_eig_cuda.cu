// Batched exact eigenvalues of many equal-n symmetric matrices on CUDA with one cuSOLVER call:
// cusolverDnXsyevBatched (cuSOLVER >= 11.7, CUDA 12.6 update 2), eigenvalues only, float32 or float64.
// torch.linalg.eigvalsh batches on CUDA only for n <= 32 and otherwise loops syevd per matrix with a host sync;
// this op hands every same-n Gram of a chunk to the solver at once and never syncs (failed matrices become NaN
// rows on the device).
//
// The cuSOLVER entry points are resolved at run time (dlopen of the libcusolver torch already loaded, dlsym):
// the extension needs neither cuSOLVER's headers to build nor a link against it, and a libcusolver without the
// batched routine (older than 11.7) simply makes the op unavailable. Built only against CUDA >= 12.6 (the
// CUDART_VERSION guard below); otherwise the op reports itself unavailable and callers use
// torch.linalg.eigvalsh (llr_kernels/spectral/tridiag_cpp.py eigvalsh_cpp).
#include "spectral.h"

#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime.h>
#include <library_types.h>

#include <dlfcn.h>

#include <math.h>
#include <cstdint>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

#if defined(CUDART_VERSION) && CUDART_VERSION >= 12060
#define LLR_SYEV_BATCHED 1
#else
#define LLR_SYEV_BATCHED 0
#endif

namespace llr {
namespace {

#if LLR_SYEV_BATCHED
// The declarations of cusolverDn.h this file uses (ABI: opaque handles, enums passed as int).
typedef struct cusolverDnContext* SolverHandle;
typedef struct cusolverDnParams* SolverParams;
typedef int SolverStatus;                 // cusolverStatus_t; 0 = CUSOLVER_STATUS_SUCCESS
constexpr int kEigModeNoVector = 0;       // CUSOLVER_EIG_MODE_NOVECTOR
constexpr int kFillModeUpper = 1;         // CUBLAS_FILL_MODE_UPPER (column-major upper = row-major lower)

using CreateFn = SolverStatus (*)(SolverHandle*);
using SetStreamFn = SolverStatus (*)(SolverHandle, cudaStream_t);
using CreateParamsFn = SolverStatus (*)(SolverParams*);
using BufferSizeFn = SolverStatus (*)(SolverHandle, SolverParams, int, int, int64_t, cudaDataType, const void*,
                                      int64_t, cudaDataType, const void*, cudaDataType, size_t*, size_t*, int64_t);
using SyevBatchedFn = SolverStatus (*)(SolverHandle, SolverParams, int, int, int64_t, cudaDataType, void*, int64_t,
                                       cudaDataType, void*, cudaDataType, void*, size_t, void*, size_t, int*,
                                       int64_t);

struct Api {
  CreateFn create = nullptr;
  SetStreamFn set_stream = nullptr;
  CreateParamsFn create_params = nullptr;
  BufferSizeFn buffer_size = nullptr;
  SyevBatchedFn syev_batched = nullptr;
  std::string why;  // empty when every entry point was found
};

const Api& api() {
  static const Api a = [] {
    Api r;
    const char* names[] = {"libcusolver.so.12", "libcusolver.so.11", "libcusolver.so"};
    void* lib = nullptr;
    for (const char* nm : names)  // the copy torch loaded first (RTLD_NOLOAD), whatever its directory
      if ((lib = dlopen(nm, RTLD_NOW | RTLD_NOLOAD)) != nullptr) break;
    if (lib == nullptr)
      for (const char* nm : names)
        if ((lib = dlopen(nm, RTLD_NOW | RTLD_LOCAL)) != nullptr) break;
    if (lib == nullptr) {
      r.why = "libcusolver could not be opened";
      return r;
    }
    r.create = reinterpret_cast<CreateFn>(dlsym(lib, "cusolverDnCreate"));
    r.set_stream = reinterpret_cast<SetStreamFn>(dlsym(lib, "cusolverDnSetStream"));
    r.create_params = reinterpret_cast<CreateParamsFn>(dlsym(lib, "cusolverDnCreateParams"));
    r.buffer_size = reinterpret_cast<BufferSizeFn>(dlsym(lib, "cusolverDnXsyevBatched_bufferSize"));
    r.syev_batched = reinterpret_cast<SyevBatchedFn>(dlsym(lib, "cusolverDnXsyevBatched"));
    if (!r.create || !r.set_stream || !r.create_params || !r.buffer_size || !r.syev_batched)
      r.why = "the loaded libcusolver has no cusolverDnXsyevBatched (needs cuSOLVER >= 11.7, CUDA 12.6u2)";
    return r;
  }();
  return a;
}

struct Solver {
  SolverHandle handle = nullptr;
  SolverParams params = nullptr;
};

// One handle (and params object) per device, created on first use and kept for the process.
Solver solver_for(int device) {
  static std::mutex mu;
  static std::unordered_map<int, Solver> cache;
  std::lock_guard<std::mutex> lock(mu);
  auto it = cache.find(device);
  if (it != cache.end()) return it->second;
  Solver s;
  TORCH_CHECK(api().create(&s.handle) == 0, "cusolverDnCreate failed");
  TORCH_CHECK(api().create_params(&s.params) == 0, "cusolverDnCreateParams failed");
  cache[device] = s;
  return s;
}
#endif  // LLR_SYEV_BATCHED

}  // namespace

std::string eigvalsh_batched_cuda_unavailable() {
#if LLR_SYEV_BATCHED
  return api().why;
#else
  return "built against CUDA < 12.6 (cusolverDnXsyevBatched needs CUDA 12.6u2)";
#endif
}

at::Tensor eigvalsh_batched_cuda(const at::Tensor& grams, at::ScalarType dtype) {
  TORCH_CHECK(grams.is_cuda() && grams.dim() == 3 && grams.size(1) == grams.size(2),
              "eigvalsh_batched_cuda: grams must be (B, n, n) on a CUDA device, got ", grams.sizes());
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kDouble, "eigvalsh_batched_cuda: dtype must be float32 or float64");
  const std::string why = eigvalsh_batched_cuda_unavailable();
  TORCH_CHECK(why.empty(), "eigvalsh_batched_cuda unavailable: ", why);
#if LLR_SYEV_BATCHED
  const c10::cuda::CUDAGuard guard(grams.device());
  const int64_t bsz = grams.size(0), n = grams.size(1);
  // cuSOLVER indexes the batch with 32-bit integers: past 2^31 - 1 elements every matrix comes back wrong, silently
  TORCH_CHECK(n * n * bsz <= INT32_MAX, "eigvalsh_batched_cuda: n * n * batch must be < 2^31 (n = ", n, ", batch = ",
              bsz, "); split the batch (at most ", INT32_MAX / (n > 0 ? n * n : 1), " matrices of this n per call)");
  auto w = at::empty({bsz, n}, grams.options().dtype(dtype));
  if (bsz == 0 || n == 0) return w;
  // The solver overwrites its input: a private contiguous copy in the compute dtype. The lower triangle of the
  // row-major Grams (all that the Gram kernels write, and what eigvalsh reads) is cuSOLVER's column-major upper.
  auto a = at::empty({bsz, n, n}, grams.options().dtype(dtype));
  a.copy_(grams);
  auto info = at::empty({bsz}, grams.options().dtype(at::kInt));
  const Solver s = solver_for(grams.get_device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  TORCH_CHECK(api().set_stream(s.handle, stream) == 0, "cusolverDnSetStream failed");
  const cudaDataType t = dtype == at::kFloat ? CUDA_R_32F : CUDA_R_64F;
  size_t dev_bytes = 0, host_bytes = 0;
  SolverStatus st = api().buffer_size(s.handle, s.params, kEigModeNoVector, kFillModeUpper, n, t, a.data_ptr(), n, t,
                                      w.data_ptr(), t, &dev_bytes, &host_bytes, bsz);
  TORCH_CHECK(st == 0, "cusolverDnXsyevBatched_bufferSize failed with status ", st, " (n = ", n, ", batch = ", bsz, ")");
  auto dev_ws = at::empty({static_cast<int64_t>(dev_bytes > 0 ? dev_bytes : 1)}, grams.options().dtype(at::kByte));
  std::vector<char> host_ws(host_bytes > 0 ? host_bytes : 1);
  st = api().syev_batched(s.handle, s.params, kEigModeNoVector, kFillModeUpper, n, t, a.data_ptr(), n, t,
                          w.data_ptr(), t, dev_ws.data_ptr(), dev_bytes, host_ws.data(), host_bytes,
                          info.data_ptr<int>(), bsz);
  TORCH_CHECK(st == 0, "cusolverDnXsyevBatched failed with status ", st, " (n = ", n, ", batch = ", bsz, ")");
  if (host_bytes > 0) C10_CUDA_CHECK(cudaStreamSynchronize(stream));  // the host workspace dies with this frame
  w.masked_fill_(info.ne(0).unsqueeze(1), NAN);  // a matrix the solver could not finish: NaN row, no host sync
  return w;
#else
  return at::Tensor();
#endif
}

}  // namespace llr
