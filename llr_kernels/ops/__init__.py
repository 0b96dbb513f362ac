"""Optimizer-step ops: a pure-torch implementation per op, with Triton and C++/CUDA kernels beside it."""
