// Multi-tensor AdamW step with one learning rate per tensor, CPU implementation (and the Python bindings of
// the CUDA implementation when it is compiled in). Semantics: llr_kernels/ops/adamw_torch.py.
//
// All tensors of the call are cut into chunks of kCpuChunk elements; at::parallel_for spreads the chunks over
// the intra-op threads; the per-chunk loop is branch-free and written so that the compiler vectorizes it
// (-O3 -fno-math-errno, `omp simd`). Per-tensor scalars (bias corrections, step size) are computed in double
// once per chunk, as torch.optim.AdamW computes them on the host.
#include "adamw.h"
#include "registry.h"

#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include <cmath>
#include <vector>

namespace llr {
namespace {

constexpr int64_t kCpuChunk = 1 << 15;

template <typename T>
struct StepScalars {
  T decay, w1, beta2, w2, step_size, bc2_sqrt, eps, grad_scale;
  bool lerp_low;  // torch's lerp formula choice: weight < 0.5
};

template <typename P, typename S, bool AMSGRAD, bool MAXIMIZE>
void adamw_span(P* __restrict__ p, const P* __restrict__ g, S* __restrict__ m, S* __restrict__ v,
                S* __restrict__ vmax, int64_t n, const StepScalars<at::opmath_type<P>>& c) {
  using T = at::opmath_type<P>;
  const T decay = c.decay, w1 = c.w1, w1c = T(1) - c.w1, beta2 = c.beta2, w2 = c.w2;
  const T step_size = c.step_size, bc2_sqrt = c.bc2_sqrt, eps = c.eps, grad_scale = c.grad_scale;
  const bool lerp_low = c.lerp_low;
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) {
    T gi = static_cast<T>(g[i]) * grad_scale;
    if (MAXIMIZE) gi = -gi;
    T pi = static_cast<T>(p[i]) * decay;
    T mi = static_cast<T>(m[i]);
    const T diff = gi - mi;
    mi = lerp_low ? mi + w1 * diff : gi - diff * w1c;
    const T vi = static_cast<T>(v[i]) * beta2 + w2 * gi * gi;
    T vh = vi;
    if (AMSGRAD) {
      const T vm = static_cast<T>(vmax[i]);
      vh = vm > vi ? vm : vi;
      vmax[i] = static_cast<S>(vh);
    }
    const T denom = std::sqrt(vh) / bc2_sqrt + eps;
    pi = pi - step_size * (mi / denom);
    p[i] = static_cast<P>(pi);
    m[i] = static_cast<S>(mi);
    v[i] = static_cast<S>(vi);
  }
}

template <typename P, typename S>
void adamw_span_dispatch(const at::Tensor& p, const at::Tensor& g, const at::Tensor& m, const at::Tensor& v,
                         const at::Tensor* vmax, int64_t start, int64_t n, bool maximize,
                         const StepScalars<at::opmath_type<P>>& c) {
  P* pp = p.data_ptr<P>() + start;
  const P* gp = g.data_ptr<P>() + start;
  S* mp = m.data_ptr<S>() + start;
  S* vp = v.data_ptr<S>() + start;
  S* xp = vmax ? vmax->data_ptr<S>() + start : nullptr;
  if (vmax) {
    if (maximize) adamw_span<P, S, true, true>(pp, gp, mp, vp, xp, n, c);
    else adamw_span<P, S, true, false>(pp, gp, mp, vp, xp, n, c);
  } else {
    if (maximize) adamw_span<P, S, false, true>(pp, gp, mp, vp, xp, n, c);
    else adamw_span<P, S, false, false>(pp, gp, mp, vp, xp, n, c);
  }
}

template <typename T>
StepScalars<T> make_scalars(double lr, double wd, double step, double beta1, double beta2, double eps,
                            double grad_scale) {
  StepScalars<T> c;
  const double bc1 = 1.0 - std::pow(beta1, step);
  const double bc2 = 1.0 - std::pow(beta2, step);
  c.decay = static_cast<T>(1.0 - lr * wd);
  c.w1 = static_cast<T>(1.0 - beta1);
  c.lerp_low = (1.0 - beta1) < 0.5;
  c.beta2 = static_cast<T>(beta2);
  c.w2 = static_cast<T>(1.0 - beta2);
  c.step_size = static_cast<T>(lr / bc1);
  c.bc2_sqrt = static_cast<T>(std::sqrt(bc2));
  c.eps = static_cast<T>(eps);
  c.grad_scale = static_cast<T>(grad_scale);
  return c;
}

struct WorkItem {
  int64_t tensor, start, len;
};

std::vector<WorkItem> make_work(const std::vector<at::Tensor>& params) {
  std::vector<WorkItem> work;
  for (int64_t t = 0; t < static_cast<int64_t>(params.size()); ++t) {
    const int64_t n = params[t].numel();
    for (int64_t s = 0; s < n; s += kCpuChunk) work.push_back({t, s, std::min(kCpuChunk, n - s)});
  }
  return work;
}

template <typename G>
double sumsq_span(const G* g, int64_t n) {
  double acc = 0.0;
  float part = 0.f;  // fp32 partial over short runs, accumulated in double
  for (int64_t i = 0; i < n; ++i) {
    const float x = static_cast<float>(g[i]);
    part += x * x;
    if ((i & 1023) == 1023) {
      acc += part;
      part = 0.f;
    }
  }
  return acc + part;
}

double grad_sumsq_cpu(const std::vector<at::Tensor>& grads, const std::vector<WorkItem>& work) {
  std::vector<double> partial(work.size(), 0.0);
  at::parallel_for(0, static_cast<int64_t>(work.size()), 1, [&](int64_t b, int64_t e) {
    for (int64_t w = b; w < e; ++w) {
      const WorkItem& it = work[w];
      const at::Tensor& g = grads[it.tensor];
      switch (g.scalar_type()) {
        case at::kFloat: partial[w] = sumsq_span(g.data_ptr<float>() + it.start, it.len); break;
        case at::kDouble: {
          const double* gp = g.data_ptr<double>() + it.start;
          double acc = 0.0;
          for (int64_t i = 0; i < it.len; ++i) acc += gp[i] * gp[i];
          partial[w] = acc;
          break;
        }
        case at::kHalf: partial[w] = sumsq_span(g.data_ptr<at::Half>() + it.start, it.len); break;
        case at::kBFloat16: partial[w] = sumsq_span(g.data_ptr<at::BFloat16>() + it.start, it.len); break;
        default: TORCH_CHECK(false, "unsupported grad dtype ", g.scalar_type());
      }
    }
  });
  double total = 0.0;
  for (double x : partial) total += x;
  return total;
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

  const std::vector<WorkItem> work = make_work(params);
  std::optional<at::Tensor> norm;
  double scale = inv_scale.has_value() ? inv_scale->item<double>() : 1.0;
  if (max_grad_norm.has_value()) {
    const double norm_val = std::sqrt(grad_sumsq_cpu(grads, work)) * scale;
    norm = at::scalar_tensor(norm_val, at::TensorOptions().dtype(at::kFloat));
    scale *= std::min(1.0, *max_grad_norm / (norm_val + 1e-6));
  }
  if (found_inf.has_value() && found_inf->item<double>() != 0.0) return norm;

  float* step_p = steps.data_ptr<float>();
  const float* lr_p = lrs.data_ptr<float>();
  const float* wd_p = weight_decays.data_ptr<float>();
  for (int64_t t = 0; t < n; ++t) step_p[t] += 1.0f;

  at::parallel_for(0, static_cast<int64_t>(work.size()), 1, [&](int64_t b, int64_t e) {
    for (int64_t w = b; w < e; ++w) {
      const WorkItem& it = work[w];
      const int64_t t = it.tensor;
      const at::Tensor& p = params[t];
      const at::Tensor* vmax = amsgrad ? &max_exp_avg_sqs[t] : nullptr;
      const double lr = lr_p[t], wd = wd_p[t], step = step_p[t];
      const bool bf16_state = exp_avgs[t].scalar_type() == at::kBFloat16;
#define LLR_SPAN(P, S)                                                                                      \
  adamw_span_dispatch<P, S>(p, grads[t], exp_avgs[t], exp_avg_sqs[t], vmax, it.start, it.len, maximize,    \
                            make_scalars<at::opmath_type<P>>(lr, wd, step, beta1, beta2, eps, scale))
      switch (p.scalar_type()) {
        case at::kFloat:
          if (bf16_state) LLR_SPAN(float, at::BFloat16); else LLR_SPAN(float, float);
          break;
        case at::kHalf:
          if (bf16_state) LLR_SPAN(at::Half, at::BFloat16); else LLR_SPAN(at::Half, float);
          break;
        case at::kBFloat16:
          if (bf16_state) LLR_SPAN(at::BFloat16, at::BFloat16); else LLR_SPAN(at::BFloat16, float);
          break;
        case at::kDouble: LLR_SPAN(double, double); break;
        default: break;  // rejected above
      }
#undef LLR_SPAN
    }
  });
  return norm;
}

namespace {

void register_adamw(pybind11::module_& m) {
  using pybind11::arg;
  m.def("adamw_step_cpu", &adamw_step_cpu,
        "Multi-tensor AdamW step, one LR per tensor, CPU (see llr_kernels.ops.adamw_torch)", arg("params"),
        arg("grads"), arg("exp_avgs"), arg("exp_avg_sqs"), arg("max_exp_avg_sqs"), arg("lrs"),
        arg("weight_decays"), arg("steps"), arg("beta1"), arg("beta2"), arg("eps"), arg("amsgrad"),
        arg("maximize"), arg("inv_scale"), arg("found_inf"), arg("max_grad_norm"));
#ifdef LLR_WITH_CUDA
  m.def("adamw_step_cuda", &adamw_step_cuda, "Multi-tensor AdamW step over a prebuilt work table, CUDA");
  m.def("grad_sumsq_cuda", &grad_sumsq_cuda, "Per-work-row sum of squared gradients, CUDA");
#endif
}

LLR_REGISTER_OPS(register_adamw);

}  // namespace
}  // namespace llr
