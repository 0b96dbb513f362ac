"""LLR in torchtitan (``llr_kernels.integrations.torchtitan``) against torchtitan's own pieces, on CPU: its llama3
debug model split into model parts with its own pipeline splitter, its optimizer container (the reference at s=1),
its LR scheduler container, its FQN-keyed checkpoint format through torch.distributed.checkpoint, and its config
manager (``--module ... --config ...``). Attention runs through causal SDPA in place of FlexAttention."""
import copy
import dataclasses

import pytest
import torch

from conftest import requires

try:
    import torchtitan  # noqa: F401

    MISSING = None
except ImportError as e:  # the optional extra: pip install -e .[torchtitan]
    MISSING = f"torchtitan is not installed ({e})"

pytestmark = requires(MISSING, "torchtitan (pip install -e .[torchtitan])")

STEPS, SEQ, BSZ = 6, 16, 2
SPLIT = [["tok_embeddings", "layers.0", "layers.1", "layers.2"], ["layers.3", "layers.4", "layers.5", "norm", "lm_head"]]
# 32 tokens a step: too few for gradient alphas of 256-wide matrices, so weight alphas only (grad_phase=0)
LLR = dict(lr=1e-3, betas=(0.9, 0.95), weight_decay=0.1, s=3.0, interval=2, total_steps=STEPS, grad_phase=0.0,
           backend="torch")


def debug_model(seed: int):
    """torchtitan's llama3 debug model with SDPA attention, initialised by its own init_weights."""
    from torchtitan.models.common.attention import ScaledDotProductAttention
    from torchtitan.models.llama3 import model_registry

    config = model_registry("debugmodel").model
    for layer in config.layers:
        layer.attention.inner_attention = ScaledDotProductAttention.Config()
    torch.manual_seed(seed)
    model = config.build()
    with torch.no_grad():
        model.init_weights(buffer_device=None)
    return model


def parts_of(model):
    from torchtitan.distributed.pipeline_parallel import _split_module

    return [_split_module(model, names) for names in SPLIT]


def tokens(seed: int):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 2048, (BSZ, SEQ + 1), generator=g) for _ in range(STEPS)]


def loss_of(parts, idx):
    h = idx[:, :-1]
    for part in parts:
        h = part(h)
    return torch.nn.functional.cross_entropy(h.reshape(-1, h.shape[-1]), idx[:, 1:].reshape(-1))


def train(parts, optimizers, data, schedulers=None):
    for idx in data:
        loss_of(parts, idx).backward()
        optimizers.step()
        if schedulers is not None:
            schedulers.step()
        optimizers.zero_grad()


def container(parts, **kw):
    from llr_kernels.integrations.torchtitan import LLROptimizersContainer

    return LLROptimizersContainer.Config(**{**LLR, **kw}).build(model_parts=parts)


def by_name(optimizers):
    return {l.name: (float(o.multipliers()[i]), o.layer_status[i]) for o in optimizers for i, l in enumerate(o.layers)}


def test_container_equals_one_optimizer_over_the_model(seed):
    """One LLRAdamW per model part, one policy: multipliers, statuses and weights exactly those of one LLRAdamW
    over the whole model; layer kinds from the parts' modules; torch's param_names are torchtitan's FQNs."""
    from llr_kernels import LLRAdamW

    model = debug_model(seed)
    whole = copy.deepcopy(model)
    parts = parts_of(model)
    opts = container(parts)
    assert len(opts) == 2 and all(type(o).__name__ == "LLRAdamW" for o in opts)
    ref = LLRAdamW(whole, **LLR)
    data = tokens(seed)
    for idx in data:
        loss_of([whole], idx).backward()
        ref.step()
        ref.zero_grad()
    train(parts, opts, data)
    got, expected = by_name(opts), by_name([ref])
    assert got == expected
    assert len({m for m, _ in expected.values()}) > 5, "the test needs per-layer multipliers"
    kinds = {l.name: l.kind for o in opts for l in o.layers}
    assert kinds["tok_embeddings.weight"] == "embedding" and kinds["lm_head.weight"] == "lm_head"
    assert expected["tok_embeddings.weight"][0] == 3.0, "the embedding is pinned at s"
    whole_params = dict(whole.named_parameters())
    for part in parts:
        for n, p in part.named_parameters():
            assert torch.equal(p, whole_params[n]), n
    names = [n for o in opts for g in o.param_groups for n in g["param_names"]]
    assert names == [n for part in parts for n, _ in part.named_parameters()]


def test_container_at_s1_matches_torchtitans_adamw(seed):
    """With every multiplier 1 ("uniform") the container steps as torchtitan's own AdamW container, LR scheduler
    included (torchtitan's warmup and decay, per part)."""
    from torchtitan.components.optimizer import LRSchedulersContainer, default_adamw

    model = debug_model(seed)
    parts, ref_parts = parts_of(model), parts_of(model)
    schedule = LRSchedulersContainer.Config(warmup_steps=2, decay_ratio=0.5, decay_type="linear", min_lr_factor=0.1)
    opts = container(parts, policy="uniform")
    ref = dataclasses.replace(default_adamw(lr=LLR["lr"]), implementation="for-loop").build(model_parts=ref_parts)
    data, init = tokens(seed), [p.detach().clone() for part in parts for p in part.parameters()]
    train(parts, opts, data, schedule.build(optimizers=opts, training_steps=STEPS))
    train(ref_parts, ref, data, schedule.build(optimizers=ref, training_steps=STEPS))
    assert [g["lr"] for o in opts for g in o.param_groups] == [g["lr"] for o in ref for g in o.param_groups]
    for part, ref_part in zip(parts, ref_parts):
        for (n, a), b in zip(part.named_parameters(), ref_part.parameters()):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=n)
    now = [p.detach() for part in parts for p in part.parameters()]
    assert min(float((a - b).abs().max()) for a, b in zip(now, init)) > 1e-4, "training must move every tensor"


def test_checkpoint_through_torchtitans_state_dict(seed, tmp_path):
    """torchtitan's container state (FQN-keyed, flat) with its LR schedulers, saved by DCP inside a multiplier
    ramp and loaded into fresh parts, optimizers and schedulers: training continues exactly as without the cut."""
    import torch.distributed.checkpoint as dcp
    from torchtitan.components.optimizer import LRSchedulersContainer

    schedule = LRSchedulersContainer.Config(warmup_steps=2, decay_ratio=0.5)
    data, cut = tokens(seed), 3

    def fresh(model_seed):
        parts = parts_of(debug_model(model_seed))
        opts = container(parts, policy="llr+alphadecay", optimizer_kwargs={"ramp_steps": 2})
        return parts, opts, schedule.build(optimizers=opts, training_steps=STEPS)

    parts, opts, scheds = fresh(seed)
    train(parts, opts, data, scheds)
    expected = by_name(opts)
    parts, opts, scheds = fresh(seed)
    train(parts, opts, data[:cut], scheds)
    assert opts.optimizers[0].policy.ramping(cut)
    state = {"model": {n: p for part in parts for n, p in part.state_dict().items()},
             "optimizer": opts.state_dict(), "lr_scheduler": scheds.state_dict()}
    assert any(k.startswith("state.tok_embeddings.weight.llr.") for k in state["optimizer"]), "per-layer LLR state by FQN"
    dcp.save(state, checkpoint_id=str(tmp_path))
    parts2, opts2, scheds2 = fresh(seed + 1)
    template = {"model": {n: p for part in parts2 for n, p in part.state_dict().items()},
                "optimizer": opts2.state_dict(), "lr_scheduler": scheds2.state_dict()}
    assert all(o.llr_step == 0 for o in opts2), "torchtitan's state initialisation is not a training step"
    dcp.load(template, checkpoint_id=str(tmp_path))
    for part in parts2:
        part.load_state_dict({n: template["model"][n] for n in part.state_dict()})
    opts2.load_state_dict(template["optimizer"])
    scheds2.load_state_dict(template["lr_scheduler"])
    assert [o.llr_step for o in opts2] == [cut, cut]
    train(parts, opts, data[cut:], scheds)
    train(parts2, opts2, data[cut:], scheds2)
    assert by_name(opts2) == by_name(opts) == expected
    for part, part2 in zip(parts, parts2):
        for (n, a), b in zip(part.named_parameters(), part2.parameters()):
            assert torch.equal(a, b), n


@pytest.mark.parametrize("form", ["model", "named_parameters"])
def test_plain_optimizer_checkpoints_by_name_in_torchtitans_format(form, seed):
    """The issue's failure: LLRAdamW(model) or LLRAdamW(model.named_parameters()) used to drop the names, and
    torchtitan's FQN-keyed state dict refused it ("Optimizer must be built with (name, param) tuples"). Now its
    flat state dict names every parameter, and loads back into a fresh optimizer."""
    from torchtitan.components.optimizer.utils import (
        get_flat_optim_state_dict,
        init_optim_state,
        load_flat_optim_state_dict,
    )

    from llr_kernels import LLRAdamW

    model = debug_model(seed)
    make = lambda: LLRAdamW(model if form == "model" else model.named_parameters(), **LLR)  # noqa: E731
    opt = make()
    loss_of([model], tokens(seed)[0]).backward()
    opt.step()
    opt.zero_grad()
    flat = get_flat_optim_state_dict(opt)
    for name, _ in model.named_parameters():
        assert f"state.{name}.exp_avg" in flat and f"param_groups.{name}.lr" in flat, name
    assert "state.tok_embeddings.weight.llr.target" in flat, "the per-layer LLR state travels by name too"
    fresh = make()
    init_optim_state(fresh)
    load_flat_optim_state_dict(fresh, flat)
    assert fresh.llr_step == opt.llr_step == 1 and torch.equal(fresh.multipliers(), opt.multipliers())
    for p in model.parameters():
        assert torch.equal(fresh.state[p]["exp_avg"], opt.state[p]["exp_avg"])


def test_config_from_the_command_line():
    """``--module llr_kernels.integrations.torchtitan --config llama3_debugmodel_llr`` with overrides: the optimizer
    follows the final training.steps and pipeline schedule, and the model spec attaches the pipeline group."""
    from torchtitan.config import ConfigManager

    from llr_kernels.integrations.torchtitan import LLROptimizersContainer, llr_kwargs

    cfg = ConfigManager().parse_args(["--module", "llr_kernels.integrations.torchtitan", "--config",
                                      "llama3_debugmodel_llr", "--training.steps", "7", "--optimizer.s", "2.5",
                                      "--optimizer.name", "LLRMuon",
                                      "--parallelism.pipeline_parallel_schedule", "Interleaved1F1B"])
    assert isinstance(cfg.optimizer, LLROptimizersContainer.Config)
    assert llr_kwargs(cfg.optimizer)["total_steps"] == 7 and cfg.optimizer.s == 2.5
    assert cfg.optimizer.pipeline_schedule == "Interleaved1F1B" and cfg.optimizer.lr == 8e-4
    parts = parts_of(debug_model(0))
    opts = cfg.optimizer.build(model_parts=parts)
    assert all(type(o).__name__ == "LLRMuon" and o.policy.config.total_steps == 7 for o in opts)
    assert all(o.max_grad_norm is None for o in opts), "clipping is torchtitan's (training.max_norm)"
    assert all(o.policy_group is opts.policy_group for o in opts)

    class NoPipeline:
        pp_enabled = False

    cfg.model_spec.post_optimizer_build_fn(opts, parts, NoPipeline())  # no pipeline: nothing to attach
    assert opts.policy_group.process_group is None


def test_stage_order_follows_torchtitans_schedules():
    """Interleaved ("loop") schedules put stages r, r + pp on rank r; V schedules r and 2 pp - 1 - r."""
    from llr_kernels.integrations.torchtitan import stage_indices

    assert [stage_indices(r, 2, 2, "Interleaved1F1B") for r in range(2)] == [[0, 2], [1, 3]]
    assert [stage_indices(r, 2, 2, "ZBVZeroBubble") for r in range(2)] == [[0, 3], [1, 2]]
    assert stage_indices(1, 4, 1, None) is None
    with pytest.raises(ValueError, match="pipeline schedule"):
        stage_indices(0, 2, 2, None)


def test_rejects_other_optimizers_in_param_groups():
    from torchtitan.components.optimizer import ParamGroupConfig

    parts = parts_of(debug_model(0))
    with pytest.raises(ValueError, match="one\\s+optimizer"):
        container(parts, param_groups=[ParamGroupConfig(pattern=r".*", optimizer_name="AdamW")])
    with pytest.raises(ValueError, match="not an LLR optimizer"):
        container(parts, name="SGD")
