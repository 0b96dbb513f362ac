"""Checkpoint analysis without training: every weight matrix's alpha and HT-SR metrics from a safetensors file, a
Hugging Face folder, a torch checkpoint or a model, streamed under a memory budget, with WeightWatcher's
conventions on request, as a table, CSV/JSON and plots (``plots``, needs matplotlib). docs/analysis.md.

    from llr_kernels.analysis import analyze
    res = analyze("model.safetensors")          # or an HF folder, a .pt file, an nn.Module
    print(res.table())
"""
from .loading import Checkpoint, CheckpointError, TensorRef, open_checkpoint
from .measure import ANALYSIS_METRICS, Settings, measure_matrices
from .report import Analysis, Comparison, block_of, compare
from .run import analyze

__all__ = ["ANALYSIS_METRICS", "Analysis", "Checkpoint", "CheckpointError", "Comparison", "Settings", "TensorRef",
           "analyze", "block_of", "compare", "measure_matrices", "open_checkpoint"]
