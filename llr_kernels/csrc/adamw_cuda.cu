// Multi-tensor AdamW step with one learning rate per tensor, CUDA implementation.
//
// One launch per dtype bucket over the cached tables built by llr_kernels/ops/_work_table.py: block w steps
// chunk work[w] = (tensor t, first element) of tensor t, whose addresses / numel / buffer index are in
// meta[t]. Thread 0 reads the tensor's LR, weight decay and step counter (all on device: no host sync, CUDA
// graph safe) and computes the per-tensor scalars in double; the block then streams the chunk with 4-wide
// vector loads when everything is 16-byte aligned (scalar loads otherwise). The step counter is bumped in the
// same launch: each block reads the old value, then increments an int32 per-tensor counter; the last block of
// the tensor writes step + 1 and resets the counter. found_inf != 0 makes every block return untouched.
#include "adamw.h"

#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cmath>
#include <cstdint>

namespace llr {
namespace {

constexpr int kThreads = 256;
constexpr int kVec = 4;

template <int64_t CODE>
struct Elem;
template <>
struct Elem<kF32> {
  using T = float;
  __device__ __forceinline__ static float load(T x) { return x; }
  __device__ __forceinline__ static T store(float x) { return x; }
};
template <>
struct Elem<kBF16> {
  using T = uint16_t;
  __device__ __forceinline__ static float load(T x) { return __uint_as_float(static_cast<uint32_t>(x) << 16); }
  __device__ __forceinline__ static T store(float x) { return __bfloat16_as_ushort(__float2bfloat16_rn(x)); }
};
template <>
struct Elem<kF16> {
  using T = uint16_t;
  __device__ __forceinline__ static float load(T x) { return __half2float(__ushort_as_half(x)); }
  __device__ __forceinline__ static T store(float x) { return __half_as_ushort(__float2half_rn(x)); }
};

template <typename T>
struct alignas(sizeof(T) * kVec) Vec {
  T v[kVec];
};

struct Scalars {
  float decay, step_size, bc2_sqrt, gscale;
};

template <bool AMSGRAD, bool MAXIMIZE>
__device__ __forceinline__ void update(float& p, float g, float& m, float& v, float& vmax, const Scalars& c,
                                       float w1, float beta2, float w2, float eps) {
  g *= c.gscale;
  if (MAXIMIZE) g = -g;
  p *= c.decay;
  m = m + w1 * (g - m);
  v = v * beta2 + w2 * g * g;
  float vh = v;
  if (AMSGRAD) {
    vh = fmaxf(vmax, v);
    vmax = vh;
  }
  const float denom = sqrtf(vh) / c.bc2_sqrt + eps;
  p = p - c.step_size * (m / denom);
}

template <int64_t PC, int64_t SC, bool AMSGRAD, bool MAXIMIZE>
__global__ void __launch_bounds__(kThreads) adamw_kernel(
    const int64_t* __restrict__ work, const int64_t* __restrict__ meta, int* __restrict__ counters,
    const float* __restrict__ lrs, const float* __restrict__ wds, float* __restrict__ steps,
    const float* __restrict__ inv_scale, const float* __restrict__ found_inf, const float* __restrict__ sumsq,
    float max_grad_norm, double log_beta1, double log_beta2, float w1, float beta2, float w2, float eps,
    int64_t chunk) {
  using PE = Elem<PC>;
  using SE = Elem<SC>;
  using PT = typename PE::T;
  using ST = typename SE::T;
  __shared__ Scalars s_c;
  __shared__ int s_go;

  const int64_t w = blockIdx.x;
  const int64_t t = work[2 * w];
  const int64_t start = work[2 * w + 1];
  const int64_t* row = meta + t * kMetaCols;
  if (threadIdx.x == 0) {
    const bool go = found_inf == nullptr || *found_inf == 0.f;
    s_go = go;
    if (go) {
      const int64_t gidx = row[kGlobalIndex];
      const float step = steps[gidx] + 1.f;
      __threadfence();  // the read above happens before this block is counted
      const int arrived = atomicAdd(counters + t, 1);
      if (arrived == row[kNumChunks] - 1) {
        __threadfence();
        steps[gidx] = step;
        counters[t] = 0;
      }
      const double lr = lrs[gidx], wd = wds[gidx];
      const double bc1 = -expm1(static_cast<double>(step) * log_beta1);
      const double bc2 = -expm1(static_cast<double>(step) * log_beta2);
      double gscale = inv_scale ? static_cast<double>(*inv_scale) : 1.0;
      if (sumsq) {
        const double norm = sqrt(static_cast<double>(*sumsq)) * gscale;
        gscale *= fmin(1.0, static_cast<double>(max_grad_norm) / (norm + 1e-6));
      }
      s_c.decay = static_cast<float>(1.0 - lr * wd);
      s_c.step_size = static_cast<float>(lr / bc1);
      s_c.bc2_sqrt = static_cast<float>(sqrt(bc2));
      s_c.gscale = static_cast<float>(gscale);
    }
  }
  __syncthreads();
  if (!s_go) return;
  const Scalars c = s_c;

  const int64_t numel = row[kNumel];
  const int64_t n = numel - start < chunk ? numel - start : chunk;
  PT* p = reinterpret_cast<PT*>(row[kParamAddr]) + start;
  const PT* g = reinterpret_cast<const PT*>(row[kGradAddr]) + start;
  ST* m = reinterpret_cast<ST*>(row[kExpAvgAddr]) + start;
  ST* v = reinterpret_cast<ST*>(row[kExpAvgSqAddr]) + start;
  ST* x = reinterpret_cast<ST*>(row[kMaxExpAvgSqAddr]) + start;

  const bool aligned = ((reinterpret_cast<uintptr_t>(p) | reinterpret_cast<uintptr_t>(g)) % sizeof(Vec<PT>) == 0) &&
                       ((reinterpret_cast<uintptr_t>(m) | reinterpret_cast<uintptr_t>(v) |
                         (AMSGRAD ? reinterpret_cast<uintptr_t>(x) : 0)) % sizeof(Vec<ST>) == 0);
  int64_t done = 0;
  if (aligned) {
    const int64_t nv = n / kVec;
    for (int64_t i = threadIdx.x; i < nv; i += kThreads) {
      Vec<PT> pv = reinterpret_cast<const Vec<PT>*>(p)[i];
      const Vec<PT> gv = reinterpret_cast<const Vec<PT>*>(g)[i];
      Vec<ST> mv = reinterpret_cast<const Vec<ST>*>(m)[i];
      Vec<ST> vv = reinterpret_cast<const Vec<ST>*>(v)[i];
      Vec<ST> xv;
      if (AMSGRAD) xv = reinterpret_cast<const Vec<ST>*>(x)[i];
#pragma unroll
      for (int k = 0; k < kVec; ++k) {
        float pf = PE::load(pv.v[k]), mf = SE::load(mv.v[k]), vf = SE::load(vv.v[k]);
        float xf = AMSGRAD ? SE::load(xv.v[k]) : 0.f;
        update<AMSGRAD, MAXIMIZE>(pf, PE::load(gv.v[k]), mf, vf, xf, c, w1, beta2, w2, eps);
        pv.v[k] = PE::store(pf);
        mv.v[k] = SE::store(mf);
        vv.v[k] = SE::store(vf);
        if (AMSGRAD) xv.v[k] = SE::store(xf);
      }
      reinterpret_cast<Vec<PT>*>(p)[i] = pv;
      reinterpret_cast<Vec<ST>*>(m)[i] = mv;
      reinterpret_cast<Vec<ST>*>(v)[i] = vv;
      if (AMSGRAD) reinterpret_cast<Vec<ST>*>(x)[i] = xv;
    }
    done = nv * kVec;
  }
  for (int64_t i = done + threadIdx.x; i < n; i += kThreads) {
    float pf = PE::load(p[i]), mf = SE::load(m[i]), vf = SE::load(v[i]);
    float xf = AMSGRAD ? SE::load(x[i]) : 0.f;
    update<AMSGRAD, MAXIMIZE>(pf, PE::load(g[i]), mf, vf, xf, c, w1, beta2, w2, eps);
    p[i] = PE::store(pf);
    m[i] = SE::store(mf);
    v[i] = SE::store(vf);
    if (AMSGRAD) x[i] = SE::store(xf);
  }
}

template <int64_t GC>
__global__ void __launch_bounds__(kThreads) grad_sumsq_kernel(const int64_t* __restrict__ work,
                                                              const int64_t* __restrict__ meta,
                                                              float* __restrict__ out, int64_t chunk) {
  using GE = Elem<GC>;
  using GT = typename GE::T;
  __shared__ float s_part[kThreads / 32];
  const int64_t w = blockIdx.x;
  const int64_t t = work[2 * w];
  const int64_t start = work[2 * w + 1];
  const int64_t* row = meta + t * kMetaCols;
  const int64_t numel = row[kNumel];
  const int64_t n = numel - start < chunk ? numel - start : chunk;
  const GT* g = reinterpret_cast<const GT*>(row[kGradAddr]) + start;
  float acc = 0.f;
  for (int64_t i = threadIdx.x; i < n; i += kThreads) {
    const float x = GE::load(g[i]);
    acc += x * x;
  }
  for (int off = 16; off > 0; off >>= 1) acc += __shfl_down_sync(0xffffffffu, acc, off);
  if (threadIdx.x % 32 == 0) s_part[threadIdx.x / 32] = acc;
  __syncthreads();
  if (threadIdx.x == 0) {
    float total = 0.f;
    for (int k = 0; k < kThreads / 32; ++k) total += s_part[k];
    out[w] = total;
  }
}

const float* opt_ptr(const std::optional<at::Tensor>& t, const char* name) {
  if (!t.has_value()) return nullptr;
  TORCH_CHECK(t->is_cuda() && t->scalar_type() == at::kFloat && t->numel() >= 1, name,
              " must be a float32 CUDA tensor");
  return t->data_ptr<float>();
}

template <int64_t PC, int64_t SC>
void launch_step(int64_t blocks, cudaStream_t stream, bool amsgrad, bool maximize, const int64_t* work,
                 const int64_t* meta, int* counters, const float* lrs, const float* wds, float* steps,
                 const float* inv_scale, const float* found_inf, const float* sumsq, float max_grad_norm,
                 double lb1, double lb2, float w1, float beta2, float w2, float eps, int64_t chunk) {
#define LLR_LAUNCH(A, M)                                                                                      \
  adamw_kernel<PC, SC, A, M><<<blocks, kThreads, 0, stream>>>(work, meta, counters, lrs, wds, steps,          \
                                                              inv_scale, found_inf, sumsq, max_grad_norm,    \
                                                              lb1, lb2, w1, beta2, w2, eps, chunk)
  if (amsgrad) {
    if (maximize) LLR_LAUNCH(true, true); else LLR_LAUNCH(true, false);
  } else {
    if (maximize) LLR_LAUNCH(false, true); else LLR_LAUNCH(false, false);
  }
#undef LLR_LAUNCH
}

}  // namespace

void adamw_step_cuda(const at::Tensor& work, const at::Tensor& meta, const at::Tensor& lrs,
                     const at::Tensor& weight_decays, const at::Tensor& steps, const at::Tensor& counters,
                     const std::optional<at::Tensor>& inv_scale, const std::optional<at::Tensor>& found_inf,
                     const std::optional<at::Tensor>& grad_sumsq, double max_grad_norm, double beta1, double beta2,
                     double eps, bool amsgrad, bool maximize, int64_t param_dtype, int64_t state_dtype,
                     int64_t chunk) {
  TORCH_CHECK(work.is_cuda() && work.scalar_type() == at::kLong && work.is_contiguous() && work.dim() == 2 &&
                  work.size(1) == 2,
              "work must be a contiguous (W, 2) int64 CUDA tensor");
  TORCH_CHECK(meta.is_cuda() && meta.scalar_type() == at::kLong && meta.is_contiguous() && meta.dim() == 2 &&
                  meta.size(1) == kMetaCols,
              "meta must be a contiguous (n, ", static_cast<int64_t>(kMetaCols), ") int64 CUDA tensor");
  TORCH_CHECK(counters.is_cuda() && counters.scalar_type() == at::kInt && counters.numel() == meta.size(0),
              "counters must be an int32 CUDA tensor with one entry per tensor");
  for (const at::Tensor* b : {&lrs, &weight_decays, &steps}) {
    TORCH_CHECK(b->is_cuda() && b->scalar_type() == at::kFloat && b->is_contiguous(),
                "lrs, weight_decays and steps must be contiguous float32 CUDA tensors");
  }
  TORCH_CHECK(beta1 >= 0 && beta1 < 1 && beta2 >= 0 && beta2 < 1, "betas must lie in [0, 1), got (", beta1, ", ",
              beta2, ")");  // beta = 0: log is -inf, so the bias correction -expm1(step * log) is 1
  const int64_t blocks = work.size(0);
  if (blocks == 0) return;
  const c10::cuda::CUDAGuard guard(work.device());
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const float* scale_p = opt_ptr(inv_scale, "inv_scale");
  const float* inf_p = opt_ptr(found_inf, "found_inf");
  const float* sumsq_p = opt_ptr(grad_sumsq, "grad_sumsq");
  const double lb1 = std::log(beta1), lb2 = std::log(beta2);
  const float w1 = static_cast<float>(1.0 - beta1), b2 = static_cast<float>(beta2), w2 = static_cast<float>(1.0 - beta2);
#define LLR_STEP(PC, SC)                                                                                     \
  launch_step<PC, SC>(blocks, stream, amsgrad, maximize, work.data_ptr<int64_t>(), meta.data_ptr<int64_t>(), \
                      counters.data_ptr<int>(), lrs.data_ptr<float>(), weight_decays.data_ptr<float>(),       \
                      steps.data_ptr<float>(), scale_p, inf_p, sumsq_p, static_cast<float>(max_grad_norm),    \
                      lb1, lb2, w1, b2, w2, static_cast<float>(eps), chunk)
  const bool bf16_state = state_dtype == kBF16;
  TORCH_CHECK(bf16_state || state_dtype == kF32, "optimizer state must be float32 or bfloat16 on CUDA");
  switch (param_dtype) {
    case kF32: if (bf16_state) LLR_STEP(kF32, kBF16); else LLR_STEP(kF32, kF32); break;
    case kF16: if (bf16_state) LLR_STEP(kF16, kBF16); else LLR_STEP(kF16, kF32); break;
    case kBF16: if (bf16_state) LLR_STEP(kBF16, kBF16); else LLR_STEP(kBF16, kF32); break;
    default: TORCH_CHECK(false, "params must be float32, float16 or bfloat16 on CUDA");
  }
#undef LLR_STEP
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

void grad_sumsq_cuda(const at::Tensor& work, const at::Tensor& meta, const at::Tensor& partials,
                     int64_t grad_dtype, int64_t chunk) {
  TORCH_CHECK(work.is_cuda() && meta.is_cuda() && partials.is_cuda() && partials.scalar_type() == at::kFloat &&
                  partials.numel() >= work.size(0) && partials.is_contiguous(),
              "grad_sumsq_cuda: bad tables or partials buffer");
  const int64_t blocks = work.size(0);
  if (blocks == 0) return;
  const c10::cuda::CUDAGuard guard(work.device());
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const int64_t* wp = work.data_ptr<int64_t>();
  const int64_t* mp = meta.data_ptr<int64_t>();
  float* out = partials.data_ptr<float>();
  switch (grad_dtype) {
    case kF32: grad_sumsq_kernel<kF32><<<blocks, kThreads, 0, stream>>>(wp, mp, out, chunk); break;
    case kF16: grad_sumsq_kernel<kF16><<<blocks, kThreads, 0, stream>>>(wp, mp, out, chunk); break;
    case kBF16: grad_sumsq_kernel<kBF16><<<blocks, kThreads, 0, stream>>>(wp, mp, out, chunk); break;
    default: TORCH_CHECK(false, "grads must be float32, float16 or bfloat16 on CUDA");
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace llr
