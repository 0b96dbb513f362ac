// Multi-tensor AdamW step with one learning rate per tensor, CPU implementation (and the Python bindings of
// the CUDA implementation when it is compiled in). Semantics: llr_kernels/ops/adamw_torch.py.
//
// Speed (the step is memory-bound once it is vectorized):
// * One pass per element: p, g, m, v are read once and p, m, v written once, math in fp32 (fp64 for fp64
//   tensors); max_exp_avg_sq is touched only with amsgrad; maximize and the grad scale fold into one factor.
// * One division and one square root per element: m / (sqrt(v) / sqrt(bc2) + eps) * lr / bc1 is evaluated as
//   (lr / bc1 * sqrt(bc2)) * m / (sqrt(v) + eps * sqrt(bc2)), equal up to rounding of the per-tensor scalars.
// * Vector code without -march=native: the element loop is compiled three times, for x86-64 baseline, AVX2+FMA
//   and AVX-512 (function `target` attributes), and the variant is chosen once at run time from ATen's CPU
//   capability (which honours ATEN_CPU_CAPABILITY) and the CPU's features. Other architectures get the
//   baseline loop, auto-vectorized for their default ISA.
// * One parallel region per call: the elements of all tensors, laid end to end, are split into one contiguous
//   range per thread (at::parallel_for), like torch's fused AdamW splits each tensor, but without a fork/join
//   per tensor.
#include "adamw.h"
#include "registry.h"

#include <ATen/Parallel.h>
#include <ATen/Version.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#if (defined(__GNUC__) || defined(__clang__)) && (defined(__x86_64__) || defined(__i386__))
#define LLR_X86_MULTIVERSION 1
#define LLR_TARGET_AVX2 __attribute__((target("avx2,fma,f16c")))
#define LLR_TARGET_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c")))
#else
#define LLR_X86_MULTIVERSION 0
#endif

#if defined(__GNUC__) || defined(__clang__)
#define LLR_INLINE inline __attribute__((always_inline))
#else
#define LLR_INLINE inline
#endif

namespace llr {
namespace {

// Elements per thread below which a call stays on one thread (fork/join costs more than it saves).
constexpr int64_t kGrain = 1 << 15;
// Block of the grad sum-of-squares (fixed, so the norm does not depend on the thread count).
constexpr int64_t kNormBlock = 1 << 15;

// ----- element loads / stores: storage type <-> compute type (float, or double for fp64) --------------------
template <typename T>
struct Io;

template <>
struct Io<float> {
  using Raw = float;
  using Math = float;
  static LLR_INLINE float load(Raw x) { return x; }
  static LLR_INLINE Raw store(float x) { return x; }
};

template <>
struct Io<double> {
  using Raw = double;
  using Math = double;
  static LLR_INLINE double load(Raw x) { return x; }
  static LLR_INLINE Raw store(double x) { return x; }
};

// bfloat16 as raw bits: widening is a shift, narrowing rounds to nearest even (NaN stays NaN), exactly as
// c10::BFloat16 does, written with integer ops the compiler vectorizes.
template <>
struct Io<at::BFloat16> {
  using Raw = uint16_t;
  using Math = float;
  static LLR_INLINE float load(Raw x) {
    const uint32_t u = static_cast<uint32_t>(x) << 16;
    float f;
    std::memcpy(&f, &u, sizeof(f));
    return f;
  }
  static LLR_INLINE Raw store(float f) {
    uint32_t u;
    std::memcpy(&u, &f, sizeof(u));
    const uint32_t rounded = (u + 0x7FFFu + ((u >> 16) & 1u)) >> 16;
    return static_cast<Raw>(f != f ? 0x7FC0u : rounded);
  }
};

template <>
struct Io<at::Half> {
  using Raw = at::Half;
  using Math = float;
  static LLR_INLINE float load(Raw x) { return static_cast<float>(x); }
  static LLR_INLINE Raw store(float x) { return static_cast<Raw>(x); }
};

// ----- per-tensor work description --------------------------------------------------------------------------
// Per-tensor scalars, computed in double on the host (as torch.optim.AdamW does) and rounded once.
template <typename T>
struct Coefs {
  T grad_scale;  // inv_scale * clip coefficient, negated for maximize
  T decay;        // 1 - lr * wd
  T lerp_coef;    // torch's lerp with weight w = 1 - beta1: m + w (g - m) if w < 0.5, else g + (w - 1)(g - m);
  bool lerp_low;  //   lerp_coef is w or w - 1, lerp_low says which
  T beta2, w2;   // v = beta2 * v + w2 * g * g
  T step;        // lr / bc1 * sqrt(bc2)
  T eps;         // eps * sqrt(bc2)
};

struct Segment;
using SpanFn = void (*)(const Segment&, int64_t begin, int64_t len);

struct Segment {
  void* p;
  const void* g;
  void* m;
  void* v;
  void* vmax;  // nullptr unless amsgrad
  int64_t numel;
  SpanFn fn;
  Coefs<float> cf;
  Coefs<double> cd;
};

template <typename T>
LLR_INLINE const Coefs<T>& coefs_of(const Segment& s);
template <>
LLR_INLINE const Coefs<float>& coefs_of<float>(const Segment& s) { return s.cf; }
template <>
LLR_INLINE const Coefs<double>& coefs_of<double>(const Segment& s) { return s.cd; }

// The element loop. P: param/grad storage type, S: state storage type.
template <typename P, typename S, bool AMSGRAD>
LLR_INLINE void adamw_span_body(const Segment& seg, int64_t begin, int64_t n) {
  using T = typename Io<P>::Math;
  using PR = typename Io<P>::Raw;
  using SR = typename Io<S>::Raw;
  PR* __restrict__ p = static_cast<PR*>(seg.p) + begin;
  const PR* __restrict__ g = static_cast<const PR*>(seg.g) + begin;
  SR* __restrict__ m = static_cast<SR*>(seg.m) + begin;
  SR* __restrict__ v = static_cast<SR*>(seg.v) + begin;
  SR* __restrict__ vmax = AMSGRAD ? static_cast<SR*>(seg.vmax) + begin : nullptr;
  const Coefs<T>& c = coefs_of<T>(seg);
  const T grad_scale = c.grad_scale, decay = c.decay, coef = c.lerp_coef;
  const T beta2 = c.beta2, w2 = c.w2, step = c.step, eps = c.eps;
  const bool lerp_low = c.lerp_low;
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) {
    const T gi = Io<P>::load(g[i]) * grad_scale;
    const T mi = Io<S>::load(m[i]);
    const T mo = (lerp_low ? mi : gi) + coef * (gi - mi);  // torch's lerp (see Coefs)
    const T vo = Io<S>::load(v[i]) * beta2 + w2 * gi * gi;
    T vh = vo;
    if (AMSGRAD) {
      const T vm = Io<S>::load(vmax[i]);
      vh = vm > vo ? vm : vo;
      vmax[i] = Io<S>::store(vh);
    }
    const T po = Io<P>::load(p[i]) * decay - step * mo / (std::sqrt(vh) + eps);
    p[i] = Io<P>::store(po);
    m[i] = Io<S>::store(mo);
    v[i] = Io<S>::store(vo);
  }
}

template <typename G>
LLR_INLINE double sumsq_body(const G* __restrict__ gp, int64_t n) {
  using R = typename Io<G>::Raw;
  using T = typename Io<G>::Math;
  const R* __restrict__ g = reinterpret_cast<const R*>(gp);
  double total = 0.0;
  for (int64_t s = 0; s < n; s += 1024) {  // fp32 partials over 1024 elements, accumulated in double
    const int64_t e = std::min<int64_t>(n, s + 1024);
    T part = 0;
#pragma omp simd reduction(+ : part)
    for (int64_t i = s; i < e; ++i) {
      const T x = Io<G>::load(g[i]);
      part += x * x;
    }
    total += static_cast<double>(part);
  }
  return total;
}

// ----- the ISA variants ---------------------------------------------------------------------------------------
enum class Isa : int { kBaseline = 0, kAvx2 = 1, kAvx512 = 2 };

template <typename P, typename S, bool AMSGRAD>
void adamw_span_baseline(const Segment& s, int64_t b, int64_t n) { adamw_span_body<P, S, AMSGRAD>(s, b, n); }
template <typename G>
double sumsq_baseline(const G* g, int64_t n) { return sumsq_body<G>(g, n); }

#if LLR_X86_MULTIVERSION
template <typename P, typename S, bool AMSGRAD>
LLR_TARGET_AVX2 void adamw_span_avx2(const Segment& s, int64_t b, int64_t n) {
  adamw_span_body<P, S, AMSGRAD>(s, b, n);
}
template <typename P, typename S, bool AMSGRAD>
LLR_TARGET_AVX512 void adamw_span_avx512(const Segment& s, int64_t b, int64_t n) {
  adamw_span_body<P, S, AMSGRAD>(s, b, n);
}
template <typename G>
LLR_TARGET_AVX2 double sumsq_avx2(const G* g, int64_t n) { return sumsq_body<G>(g, n); }
template <typename G>
LLR_TARGET_AVX512 double sumsq_avx512(const G* g, int64_t n) { return sumsq_body<G>(g, n); }
#endif

// Best variant this CPU (and ATen's capability setting) allows; -1 = not yet detected.
std::atomic<int> g_isa{-1};
std::atomic<int> g_isa_override{-1};

Isa detect_isa() {
#if LLR_X86_MULTIVERSION
  // at::get_cpu_capability() is what ATen's own kernels use ("DEFAULT", "AVX2", "AVX512"); it honours the
  // ATEN_CPU_CAPABILITY environment variable. The exact features our variants are compiled for are checked too.
  const std::string cap = at::get_cpu_capability();
  __builtin_cpu_init();
  const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
  const bool avx512 = avx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                      __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
  if (cap == "AVX512" && avx512) return Isa::kAvx512;
  if ((cap == "AVX512" || cap == "AVX2") && avx2) return Isa::kAvx2;
#endif
  return Isa::kBaseline;
}

Isa current_isa() {
  const int o = g_isa_override.load(std::memory_order_relaxed);
  if (o >= 0) return static_cast<Isa>(o);
  int isa = g_isa.load(std::memory_order_relaxed);
  if (isa < 0) {
    isa = static_cast<int>(detect_isa());
    g_isa.store(isa, std::memory_order_relaxed);
  }
  return static_cast<Isa>(isa);
}

const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::kAvx2: return "avx2";
    case Isa::kAvx512: return "avx512";
    default: return "baseline";
  }
}

template <typename P, typename S, bool AMSGRAD>
SpanFn pick_span(Isa isa) {
#if LLR_X86_MULTIVERSION
  if (isa == Isa::kAvx512) return &adamw_span_avx512<P, S, AMSGRAD>;
  if (isa == Isa::kAvx2) return &adamw_span_avx2<P, S, AMSGRAD>;
#endif
  (void)isa;
  return &adamw_span_baseline<P, S, AMSGRAD>;
}

template <typename P, typename S>
SpanFn pick_span(Isa isa, bool amsgrad) {
  return amsgrad ? pick_span<P, S, true>(isa) : pick_span<P, S, false>(isa);
}

SpanFn pick_span(Isa isa, at::ScalarType pd, at::ScalarType sd, bool amsgrad) {
  const bool bf16_state = sd == at::kBFloat16;
  switch (pd) {
    case at::kFloat:
      return bf16_state ? pick_span<float, at::BFloat16>(isa, amsgrad) : pick_span<float, float>(isa, amsgrad);
    case at::kBFloat16:
      return bf16_state ? pick_span<at::BFloat16, at::BFloat16>(isa, amsgrad)
                        : pick_span<at::BFloat16, float>(isa, amsgrad);
    case at::kHalf:
      return bf16_state ? pick_span<at::Half, at::BFloat16>(isa, amsgrad) : pick_span<at::Half, float>(isa, amsgrad);
    case at::kDouble: return pick_span<double, double>(isa, amsgrad);
    default: TORCH_CHECK(false, "unsupported param dtype ", pd);
  }
}

template <typename G>
double sumsq(Isa isa, const G* g, int64_t n) {
#if LLR_X86_MULTIVERSION
  if (isa == Isa::kAvx512) return sumsq_avx512<G>(g, n);
  if (isa == Isa::kAvx2) return sumsq_avx2<G>(g, n);
#endif
  (void)isa;
  return sumsq_baseline<G>(g, n);
}

// Sum of squares of every grad, in blocks of kNormBlock elements summed in a fixed order.
double grad_sumsq_cpu(const std::vector<at::Tensor>& grads, Isa isa) {
  struct Block {
    int64_t tensor, start, len;
  };
  std::vector<Block> blocks;
  for (int64_t t = 0; t < static_cast<int64_t>(grads.size()); ++t) {
    const int64_t n = grads[t].numel();
    for (int64_t s = 0; s < n; s += kNormBlock) blocks.push_back({t, s, std::min(kNormBlock, n - s)});
  }
  std::vector<double> partial(blocks.size(), 0.0);
  at::parallel_for(0, static_cast<int64_t>(blocks.size()), 1, [&](int64_t b, int64_t e) {
    for (int64_t w = b; w < e; ++w) {
      const Block& it = blocks[w];
      const at::Tensor& g = grads[it.tensor];
      switch (g.scalar_type()) {
        case at::kFloat: partial[w] = sumsq(isa, g.data_ptr<float>() + it.start, it.len); break;
        case at::kDouble: partial[w] = sumsq(isa, g.data_ptr<double>() + it.start, it.len); break;
        case at::kHalf: partial[w] = sumsq(isa, g.data_ptr<at::Half>() + it.start, it.len); break;
        case at::kBFloat16: partial[w] = sumsq(isa, g.data_ptr<at::BFloat16>() + it.start, it.len); break;
        default: TORCH_CHECK(false, "unsupported grad dtype ", g.scalar_type());
      }
    }
  });
  double total = 0.0;
  for (double x : partial) total += x;
  return total;
}

template <typename T>
Coefs<T> make_coefs(double lr, double wd, double step, double beta1, double beta2, double eps, double grad_scale) {
  const double bc1 = 1.0 - std::pow(beta1, step);
  const double bc2_sqrt = std::sqrt(1.0 - std::pow(beta2, step));
  const double w1 = 1.0 - beta1;
  const bool low = w1 < 0.5;
  Coefs<T> c;
  c.grad_scale = static_cast<T>(grad_scale);
  c.decay = static_cast<T>(1.0 - lr * wd);
  c.lerp_low = low;
  c.lerp_coef = low ? static_cast<T>(w1) : static_cast<T>(w1) - T(1);
  c.beta2 = static_cast<T>(beta2);
  c.w2 = static_cast<T>(1.0 - beta2);
  c.step = static_cast<T>(lr / bc1 * bc2_sqrt);
  c.eps = static_cast<T>(eps * bc2_sqrt);
  return c;
}

void check_state(const at::Tensor& p, const at::Tensor& s, const char* name) {
  TORCH_CHECK(s.device() == p.device() && s.numel() == p.numel() && s.is_contiguous(), name,
              " must be a contiguous tensor with the param's device and number of elements");
}

}  // namespace

// CPU op: same arguments and semantics as llr_kernels.ops.adamw_torch.adamw_step_torch.
std::optional<at::Tensor> adamw_step_cpu(const std::vector<at::Tensor>& params, const std::vector<at::Tensor>& grads,
                                         const std::vector<at::Tensor>& exp_avgs,
                                         const std::vector<at::Tensor>& exp_avg_sqs,
                                         const std::vector<at::Tensor>& max_exp_avg_sqs, const at::Tensor& lrs,
                                         const at::Tensor& weight_decays, const at::Tensor& steps, double beta1,
                                         double beta2, double eps, bool amsgrad, bool maximize,
                                         const std::optional<at::Tensor>& inv_scale,
                                         const std::optional<at::Tensor>& found_inf,
                                         std::optional<double> max_grad_norm) {
  const int64_t n = static_cast<int64_t>(params.size());
  TORCH_CHECK(static_cast<int64_t>(grads.size()) == n && static_cast<int64_t>(exp_avgs.size()) == n &&
                  static_cast<int64_t>(exp_avg_sqs.size()) == n && lrs.numel() == n &&
                  weight_decays.numel() == n && steps.numel() == n,
              "params, grads, exp_avgs, exp_avg_sqs, lrs, weight_decays and steps must have one entry per tensor");
  TORCH_CHECK(!amsgrad || static_cast<int64_t>(max_exp_avg_sqs.size()) == n,
              "amsgrad=True needs max_exp_avg_sqs with one tensor per param");
  for (const at::Tensor* b : {&lrs, &weight_decays, &steps}) {
    TORCH_CHECK(b->device().is_cpu() && b->scalar_type() == at::kFloat && b->is_contiguous(),
                "lrs, weight_decays and steps must be contiguous float32 CPU tensors");
  }
  for (int64_t t = 0; t < n; ++t) {
    const at::Tensor& p = params[t];
    TORCH_CHECK(p.device().is_cpu() && p.is_contiguous(), "params must be contiguous CPU tensors");
    TORCH_CHECK(grads[t].scalar_type() == p.scalar_type(), "grad dtype must match param dtype");
    check_state(p, grads[t], "grad");
    check_state(p, exp_avgs[t], "exp_avg");
    check_state(p, exp_avg_sqs[t], "exp_avg_sq");
    TORCH_CHECK(exp_avg_sqs[t].scalar_type() == exp_avgs[t].scalar_type(), "exp_avg and exp_avg_sq dtypes differ");
    if (amsgrad) {
      check_state(p, max_exp_avg_sqs[t], "max_exp_avg_sq");
      TORCH_CHECK(max_exp_avg_sqs[t].scalar_type() == exp_avgs[t].scalar_type(), "max_exp_avg_sq dtype differs");
    }
    const auto pd = p.scalar_type(), sd = exp_avgs[t].scalar_type();
    const bool ok = (pd == at::kDouble && sd == at::kDouble) ||
                    ((pd == at::kFloat || pd == at::kHalf || pd == at::kBFloat16) &&
                     (sd == at::kFloat || sd == at::kBFloat16));
    TORCH_CHECK(ok, "unsupported (param, state) dtypes (", pd, ", ", sd,
                "): params fp32/fp16/bf16 with fp32/bf16 state, or fp64 with fp64 state");
  }

  const Isa isa = current_isa();
  std::optional<at::Tensor> norm;
  double scale = inv_scale.has_value() ? inv_scale->item<double>() : 1.0;
  if (max_grad_norm.has_value()) {
    const double norm_val = std::sqrt(grad_sumsq_cpu(grads, isa)) * scale;
    norm = at::scalar_tensor(norm_val, at::TensorOptions().dtype(at::kFloat));
    scale *= std::min(1.0, *max_grad_norm / (norm_val + 1e-6));
  }
  if (found_inf.has_value() && found_inf->item<double>() != 0.0) return norm;
  if (maximize) scale = -scale;

  float* step_p = steps.data_ptr<float>();
  const float* lr_p = lrs.data_ptr<float>();
  const float* wd_p = weight_decays.data_ptr<float>();

  // One segment per non-empty tensor; offsets[k] = first element of segment k in the concatenated range.
  std::vector<Segment> segs;
  std::vector<int64_t> offsets;
  segs.reserve(n);
  offsets.reserve(n + 1);
  int64_t total = 0;
  for (int64_t t = 0; t < n; ++t) {
    step_p[t] += 1.0f;
    const at::Tensor& p = params[t];
    const int64_t numel = p.numel();
    if (numel == 0) continue;
    const double lr = lr_p[t], wd = wd_p[t], step = step_p[t];
    Segment s;
    s.p = p.data_ptr();
    s.g = grads[t].data_ptr();
    s.m = exp_avgs[t].data_ptr();
    s.v = exp_avg_sqs[t].data_ptr();
    s.vmax = amsgrad ? max_exp_avg_sqs[t].data_ptr() : nullptr;
    s.numel = numel;
    s.fn = pick_span(isa, p.scalar_type(), exp_avgs[t].scalar_type(), amsgrad);
    if (p.scalar_type() == at::kDouble) s.cd = make_coefs<double>(lr, wd, step, beta1, beta2, eps, scale);
    else s.cf = make_coefs<float>(lr, wd, step, beta1, beta2, eps, scale);
    offsets.push_back(total);
    segs.push_back(s);
    total += numel;
  }
  offsets.push_back(total);
  if (total == 0) return norm;

  // Each thread takes one contiguous range of the concatenated elements and walks the tensors it covers.
  at::parallel_for(0, total, kGrain, [&](int64_t begin, int64_t end) {
    int64_t k = std::upper_bound(offsets.begin(), offsets.end(), begin) - offsets.begin() - 1;
    for (int64_t pos = begin; pos < end; ++k) {
      const Segment& s = segs[k];
      const int64_t local = pos - offsets[k];
      const int64_t len = std::min(end, offsets[k + 1]) - pos;
      s.fn(s, local, len);
      pos += len;
    }
  });
  return norm;
}

namespace {

// Which vector variant the CPU step uses ("baseline", "avx2", "avx512"); for benchmarks and tests.
std::string adamw_cpu_isa() { return isa_name(current_isa()); }

// Force a variant ("baseline", "avx2", "avx512", or "" to return to automatic detection); returns the previous
// one. For tests that check every variant on one machine: forcing one the CPU lacks raises.
std::string set_adamw_cpu_isa(const std::string& name) {
  const std::string prev = adamw_cpu_isa();
  if (name.empty()) {
    g_isa_override.store(-1);
    return prev;
  }
  Isa want;
  if (name == "baseline") want = Isa::kBaseline;
  else if (name == "avx2") want = Isa::kAvx2;
  else if (name == "avx512") want = Isa::kAvx512;
  else TORCH_CHECK(false, "unknown CPU variant '", name, "': use baseline, avx2, avx512 or ''");
  g_isa_override.store(-1);
  TORCH_CHECK(static_cast<int>(want) <= static_cast<int>(current_isa()),
              "this CPU (or ATEN_CPU_CAPABILITY) does not allow the '", name, "' variant; the best available is '",
              adamw_cpu_isa(), "'");
  g_isa_override.store(static_cast<int>(want));
  return prev;
}

void register_adamw(pybind11::module_& m) {
  using pybind11::arg;
  m.def("adamw_step_cpu", &adamw_step_cpu,
        "Multi-tensor AdamW step, one LR per tensor, CPU (see llr_kernels.ops.adamw_torch)", arg("params"),
        arg("grads"), arg("exp_avgs"), arg("exp_avg_sqs"), arg("max_exp_avg_sqs"), arg("lrs"),
        arg("weight_decays"), arg("steps"), arg("beta1"), arg("beta2"), arg("eps"), arg("amsgrad"),
        arg("maximize"), arg("inv_scale"), arg("found_inf"), arg("max_grad_norm"));
  m.def("adamw_cpu_isa", &adamw_cpu_isa, "Vector variant used by adamw_step_cpu: baseline, avx2 or avx512");
  m.def("set_adamw_cpu_isa", &set_adamw_cpu_isa, arg("name"),
        "Force the vector variant of adamw_step_cpu ('' = automatic); returns the previous one");
#ifdef LLR_WITH_CUDA
  m.def("adamw_step_cuda", &adamw_step_cuda, "Multi-tensor AdamW step over a prebuilt work table, CUDA");
  m.def("grad_sumsq_cuda", &grad_sumsq_cuda, "Per-work-row sum of squared gradients, CUDA");
#endif
}

LLR_REGISTER_OPS(register_adamw);

}  // namespace
}  // namespace llr
