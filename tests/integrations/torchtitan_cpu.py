"""Run torchtitan's own trainer (``torchtitan.train``) on CPU ranks, for tests: what torchtitan 0.3.0 needs to run
without a GPU, then its entry point. torchtitan itself is unchanged; each shim says why it is needed.

    python -m torch.distributed.run --nproc_per_node 2 tests/integrations/torchtitan_cpu.py \\
        --module torchtitan_cpu --config llama3_cpu_llr --parallelism.pipeline_parallel_degree 2 ...

``torchtitan_assets.make_assets(folder)`` writes a tokenizer and a small corpus for it (torchtitan's own test assets
are not in its wheel); pass ``--hf_assets_path`` and ``--dataloader.dataset_path`` to them.
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass

import torch
import torch._utils

# 1. torchtitan picks its device type once, at import, and falls back to "cuda" on a machine without accelerators
torch._utils._get_available_device_type = lambda: "cpu"
import torchtitan.components.metrics as metrics  # noqa: E402  (after the device shim)
import torchtitan.distributed.utils as dist_utils  # noqa: E402

# 2. after the first step torchtitan shortens every group's timeout: a barrier with device_ids (a CPU has no device
# index) and torch.distributed.set_timeout (not in torch 2.13). Timeouts stay at their defaults
dist_utils.set_pg_timeouts = lambda *args, **kwargs: None


@dataclass
class _CPUMemory:
    max_active_gib: float = 0.0
    max_active_pct: float = 0.0
    max_reserved_gib: float = 0.0
    max_reserved_pct: float = 0.0
    num_alloc_retries: int = 0
    num_ooms: int = 0


class _CPUMemoryMonitor:
    """3. torchtitan's memory monitor reads accelerator memory statistics; a CPU has none."""

    device_name = "cpu"
    device_capacity_gib = 0.0

    def get_peak_stats(self) -> _CPUMemory:
        return _CPUMemory()

    def reset_peak_stats(self) -> None:
        pass


metrics.build_device_memory_monitor = _CPUMemoryMonitor


def _accept_microbatch_lists(step):
    """5. torchtitan 0.3.0 hands pipeline schedules pre-split microbatches (``arg_mbs``, ``kwarg_mbs``,
    ``target_mbs``), an argument form torch 2.13's schedules lack; joined back into one batch, the schedule splits
    them into the same microbatches again."""

    def join(parts):
        return torch.cat(parts) if isinstance(parts[0], torch.Tensor) else parts[0]

    def wrapped(self, *args, arg_mbs=None, kwarg_mbs=None, target_mbs=None, **kwargs):
        if arg_mbs is None and kwarg_mbs is None and target_mbs is None:
            return step(self, *args, **kwargs)
        if arg_mbs:
            args = tuple(join([mb[i] for mb in arg_mbs]) for i in range(len(arg_mbs[0])))
        for key in (kwarg_mbs[0] if kwarg_mbs else {}):
            kwargs[key] = join([mb[key] for mb in kwarg_mbs])
        if target_mbs:
            kwargs["target"] = torch.cat(target_mbs)
        return step(self, *args, **kwargs)

    return wrapped


def _shim_pipeline_schedules() -> None:
    from torch.distributed.pipelining import schedules

    for cls in (schedules.PipelineScheduleSingle, schedules.PipelineScheduleMulti):
        if "arg_mbs" not in cls.step.__code__.co_varnames:
            cls.step = _accept_microbatch_lists(cls.step)


_shim_pipeline_schedules()


def llama3_cpu_llr():
    """torchtitan's llama3 debug model with LLR (``with_llr``), causal SDPA in place of FlexAttention (an earlier
    CPU attempt needed it; FlexAttention on CPU was not tried again) and no validation or tensorboard: the smallest
    trainer run."""
    from torchtitan.models.common.attention import ScaledDotProductAttention
    from torchtitan.models.llama3.config_registry import llama3_debugmodel

    from llr_kernels.integrations.torchtitan import with_llr

    config = llama3_debugmodel()
    for layer in config.model_spec.model.layers:
        layer.attention.inner_attention = ScaledDotProductAttention.Config()
    config.validator.enable = False
    config.training.disable_cuda_graphs = True  # no CUDA graphs on a CPU (and none with pipeline parallelism)
    config.metrics.enable_tensorboard = False
    return with_llr(config, interval=2, s=3.0, min_eigs=8, backend="torch")


def dump_llr_state(trainer, path: str) -> None:
    """Each rank's LLR optimizers after training (per part: layer names, kinds, alphas, multipliers, statuses, step
    and the size of the group the policy spans), for the test to check."""
    rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
    group = trainer.optimizers.policy_group
    parts = [{"names": [l.name for l in o.layers], "kinds": [l.kind for l in o.layers],
              "alphas": o.policy.alphas.clone(), "mult": o.multipliers(), "status": list(o.layer_status),
              "step": o.llr_step, "num_updates": o.policy.num_updates} for o in trainer.optimizers]
    world = 1 if group.process_group is None else torch.distributed.get_world_size(group.process_group)
    torch.save({"parts": parts, "stages": group.stages, "group_world": world}, f"{path}.{rank}")


def main() -> None:
    """torchtitan.train.main's training path, plus ``dump_llr_state`` when LLR_TORCHTITAN_DUMP names a file."""
    from torchtitan.config import ConfigManager
    from torchtitan.tools.logging import init_logger

    init_logger()
    config = ConfigManager().parse_args()
    trainer = config.build()
    try:
        trainer.train()
        if os.environ.get("LLR_TORCHTITAN_DUMP"):
            dump_llr_state(trainer, os.environ["LLR_TORCHTITAN_DUMP"])
    finally:
        trainer.close()
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # --module torchtitan_cpu
    main()
