// Multi-tensor, multi-LR AdamW step: shared declarations of the CPU (adamw_cpu.cpp) and CUDA (adamw_cuda.cu)
// implementations. The CUDA side is compiled only when CUDA is present (LLR_WITH_CUDA).
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <optional>

namespace llr {

// dtype codes shared with llr_kernels/ops/_work_table.py
enum DtypeCode : int64_t { kF32 = 0, kF16 = 1, kBF16 = 2, kF64 = 3 };

// Columns of the per-tensor table (int64, shape (n, kMetaCols)) built by llr_kernels/ops/_work_table.py.
enum MetaCol : int64_t {
  kParamAddr = 0, kGradAddr, kExpAvgAddr, kExpAvgSqAddr, kMaxExpAvgSqAddr, kNumel, kGlobalIndex, kNumChunks,
  kMetaCols
};

#ifdef LLR_WITH_CUDA
// One launch: every (tensor, chunk) row of `work` (int64, (W, 2): local tensor index, first element).
void adamw_step_cuda(const at::Tensor& work, const at::Tensor& meta, const at::Tensor& lrs,
                     const at::Tensor& weight_decays, const at::Tensor& steps, const at::Tensor& counters,
                     const std::optional<at::Tensor>& inv_scale, const std::optional<at::Tensor>& found_inf,
                     const std::optional<at::Tensor>& grad_sumsq, double max_grad_norm, double beta1, double beta2,
                     double eps, bool amsgrad, bool maximize, int64_t param_dtype, int64_t state_dtype,
                     int64_t chunk);

// partials[w] = sum of squares (fp32) of the raw gradient chunk of work row w.
void grad_sumsq_cuda(const at::Tensor& work, const at::Tensor& meta, const at::Tensor& partials,
                     int64_t grad_dtype, int64_t chunk);
#endif

}  // namespace llr
