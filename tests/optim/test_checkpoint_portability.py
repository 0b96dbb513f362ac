"""Checkpoints across wrappers, older formats and torch.optim.AdamW.

* A state_dict saved by an optimizer built on ``torch.compile(model)``, ``DDP(model)`` or a model whose blocks are
  activation-checkpoint wrapped loads into one built on the plain model (and back), and the run continues bit
  for bit as the uninterrupted one (torch backend).
* A mismatch names the first differing layer; older checkpoints (format 1: no "format", no shapes, names as the
  model spelled them) still load.
* ``LLRAdamW.load_torch_state_dict`` continues a ``torch.optim.AdamW`` run: at s = 1 bit for bit the torch run.
"""
from __future__ import annotations

import copy
import io

import pytest
import torch

from llr_kernels import LLRAdamW
from llr_kernels.optim.wrappers import normalize_name
from tiny_models import TinyLlama, batches, lm_loss

pytestmark = pytest.mark.usefixtures("nan_fill")
KW = dict(lr=3e-3, weight_decay=0.1, s=3.0, interval=3, min_eigs=8, backend="torch")


@pytest.mark.parametrize("name,want", [
    ("_orig_mod.model.layers.0.mlp.up_proj.weight", "model.layers.0.mlp.up_proj.weight"),
    ("module.lm_head.weight", "lm_head.weight"),
    ("_orig_mod.module.model.norm.weight", "model.norm.weight"),
    ("module._orig_mod.model.norm.weight", "model.norm.weight"),
    ("_fsdp_wrapped_module.model.layers.1._fsdp_wrapped_module.self_attn.q_proj.weight", "model.layers.1.self_attn.q_proj.weight"),
    ("model.layers.0._checkpoint_wrapped_module.mlp.down_proj.weight", "model.layers.0.mlp.down_proj.weight"),
    ("model.layers.0._orig_mod.mlp.gate_proj.weight", "model.layers.0.mlp.gate_proj.weight"),
    ("encoder.module.weight", "encoder.module.weight"),  # a model's own submodule called "module" keeps its name
    ("lm_head.weight", "lm_head.weight"),
])
def test_normalize_name(name, want):
    assert normalize_name(name) == want


def save_load(obj: dict) -> dict:
    buf = io.BytesIO()
    torch.save(obj, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


def train(model, opt, batches_, sched=None) -> None:
    for idx in batches_:
        opt.zero_grad()
        lm_loss(model, idx).backward()  # the plain module: wrappers share its parameters
        opt.step()
        if sched is not None:
            sched.step()


def wrap(model: TinyLlama, how: str):
    """What the optimizer is built on: the model under a wrapper (parameters shared with ``model``)."""
    if how == "plain":
        return model
    if how == "compile":
        return torch.compile(model)  # lazy: nothing is compiled until a forward through it
    if how == "ddp":
        return torch.nn.parallel.DistributedDataParallel(model)
    if how == "checkpoint":
        from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper

        for i, blk in enumerate(model.model.layers):
            model.model.layers[i] = checkpoint_wrapper(blk)
        return model
    raise ValueError(how)


@pytest.mark.parametrize("saved_on,loaded_on", [
    ("compile", "plain"), ("plain", "compile"), ("ddp", "plain"), ("plain", "ddp"), ("checkpoint", "plain"),
    ("compile", "ddp"),
])
def test_checkpoint_loads_across_wrappers_and_continues_bit_for_bit(saved_on, loaded_on, request, seed):
    if "ddp" in (saved_on, loaded_on):
        request.getfixturevalue("one_rank_group")
    torch.manual_seed(seed)
    init = TinyLlama()
    data = batches(8, seed=seed)
    whole = copy.deepcopy(init)
    opt_whole = LLRAdamW(whole, **KW)
    train(whole, opt_whole, data)

    first = copy.deepcopy(init)
    opt_first = LLRAdamW(wrap(first, saved_on), **KW)
    train(first, opt_first, data[:4])
    ck = save_load({"model": first.state_dict(), "opt": opt_first.state_dict()})
    assert all(not n.startswith(("_orig_mod", "module")) and "_wrapped_module" not in n for n in ck["opt"]["llr"]["layer_names"])

    torch.manual_seed(seed + 1)
    second = TinyLlama()
    built_on = wrap(second, loaded_on)
    if saved_on == "checkpoint":
        ck["model"] = {normalize_name(k): v for k, v in ck["model"].items()}
    second.load_state_dict(ck["model"])
    opt_second = LLRAdamW(built_on, **KW)
    opt_second.load_state_dict(ck["opt"])
    assert [l.name for l in opt_second.layers] == [n for n, _ in init.named_parameters()]  # no wrapper levels
    train(second, opt_second, data[4:])
    for (n, p), q in zip(whole.named_parameters(), second.parameters()):
        assert torch.equal(p, q), n
    assert torch.equal(opt_whole.multipliers(), opt_second.multipliers())
    assert opt_second.llr.num_updates == opt_whole.llr.num_updates == 3  # steps 0, 3 before the cut, 6 after


def test_mismatch_names_the_first_differing_layer():
    saved = LLRAdamW(TinyLlama(layers=2), **KW).state_dict()
    with pytest.raises(ValueError, match=r"layer 19 is 'model\.norm\.weight' in the checkpoint but "
                                         r"'model\.layers\.2\.input_layernorm\.weight' here \(21 layers saved, 30 here"):
        LLRAdamW(TinyLlama(layers=3), **KW).load_state_dict(saved)
    with pytest.raises(ValueError, match=r"layer 0 \('model\.embed_tokens\.weight'\) has shape \(96, 64\) but this "
                                         r"optimizer's has \(96, 32\)"):
        LLRAdamW(TinyLlama(d=32, ffn=64), **KW).load_state_dict(saved)
    with pytest.raises(ValueError, match="no 'llr' entry.*load_torch_state_dict"):
        LLRAdamW(TinyLlama(), **KW).load_state_dict(torch.optim.AdamW(TinyLlama().parameters()).state_dict())


def test_older_format_loads_and_a_newer_one_says_upgrade(seed):
    """Format 1 (before wrapper-free names): no "format", no "layer_shapes", names as the model spelled them
    (here a compiled model's), written exactly as that version's state_dict did."""
    torch.manual_seed(seed)
    init = TinyLlama()
    data = batches(6, seed=seed)
    whole = copy.deepcopy(init)
    opt_whole = LLRAdamW(whole, **KW)
    train(whole, opt_whole, data)
    first = copy.deepcopy(init)
    opt_first = LLRAdamW(first, **KW)
    train(first, opt_first, data[:4])
    sd = opt_first.state_dict()
    llr = sd["llr"]
    sd["llr"] = {"step": llr["step"], "policy": llr["policy"], "hill_status": llr["hill_status"],
                 "update_seconds": llr["update_seconds"],
                 "layer_names": ["_orig_mod." + n for n, _ in init.named_parameters()]}
    ck = save_load({"model": first.state_dict(), "opt": sd})
    second = TinyLlama()
    second.load_state_dict(ck["model"])
    opt_second = LLRAdamW(second, **KW)
    opt_second.load_state_dict(ck["opt"])
    train(second, opt_second, data[4:])
    for (n, p), q in zip(whole.named_parameters(), second.parameters()):
        assert torch.equal(p, q), n
    newer = {**ck["opt"], "llr": {**ck["opt"]["llr"], "format": 99}}
    with pytest.raises(ValueError, match="format 99, newer than this llr_kernels reads.*upgrade llr_kernels"):
        opt_second.load_state_dict(newer)


def decay_groups(model) -> list[dict]:
    """Hugging Face Trainer's grouping: weight decay on matrices, none on norms and biases."""
    return [{"params": [p for p in model.parameters() if p.dim() >= 2], "weight_decay": 0.1},
            {"params": [p for p in model.parameters() if p.dim() < 2], "weight_decay": 0.0}]


@pytest.mark.parametrize("amsgrad", [False, True])
def test_llr_adamw_continues_a_torch_adamw_run_bit_for_bit(amsgrad, seed):
    torch.manual_seed(seed)
    model = TinyLlama()
    data = batches(9, seed=seed)
    lam = lambda t: min(1.0, (t + 1) / 3) * 0.9 ** t  # noqa: E731 - warmup then decay: the LR changes every step
    ref = torch.optim.AdamW(decay_groups(model), lr=3e-3, betas=(0.9, 0.95), amsgrad=amsgrad, foreach=False)
    ref_sched = torch.optim.lr_scheduler.LambdaLR(ref, lam)
    train(model, ref, data[:5], ref_sched)
    ck = save_load({"model": model.state_dict(), "opt": ref.state_dict(), "sched": ref_sched.state_dict()})
    train(model, ref, data[5:], ref_sched)  # the torch run, continued

    torch.manual_seed(seed + 1)
    ours = TinyLlama()
    ours.load_state_dict(ck["model"])
    opt = LLRAdamW(decay_groups(ours), model=ours, lr=1.0, betas=(0.5, 0.5), amsgrad=amsgrad, s=1.0, interval=2,
                   backend="torch")  # lr and betas come from the checkpoint, as torch's load_state_dict sets them
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lam)
    opt.load_torch_state_dict(ck["opt"])
    sched.load_state_dict(ck["sched"])
    assert opt.llr_step == 5 and opt.llr.num_updates == 0 and set(opt.hill_status) == {"not_measured"}
    assert opt.param_groups[0]["betas"] == (0.9, 0.95) and opt.param_groups[1]["weight_decay"] == 0.0
    train(ours, opt, data[5:], sched)
    for (n, p), q in zip(ours.named_parameters(), model.parameters()):
        assert torch.equal(p, q), n
    assert opt.llr.num_updates == 2  # steps 6 and 8: the LLR schedule counts the torch run's steps
    assert all(float(opt.state[p]["step"]) == 9 for p in ours.parameters())


def test_torch_checkpoint_starts_fresh_llr_state_and_checks_the_parameters():
    model = TinyLlama()
    ref = torch.optim.AdamW(model.named_parameters(), lr=1e-3)  # torch >= 2.6 stores param_names
    train(model, ref, batches(2))
    sd = ref.state_dict()
    opt = LLRAdamW(model, s=3.0, backend="torch")
    opt.load_torch_state_dict(sd, llr_step=0)
    kinds = [l.kind for l in opt.layers]
    assert opt.multipliers().tolist() == [3.0 if k == "embedding" else 1.0 for k in kinds]
    assert opt.llr.is_update_step(opt.llr_step)  # llr_step=0: measured at the next step
    e = model.model.embed_tokens.weight
    torch.testing.assert_close(opt.state[e]["exp_avg"], ref.state[e]["exp_avg"], rtol=0, atol=0)
    if "param_names" in sd["param_groups"][0]:
        swapped = copy.deepcopy(sd)
        names = swapped["param_groups"][0]["param_names"]
        names[1], names[2] = names[2], names[1]
        with pytest.raises(ValueError, match=r"parameter 1 of param group 0 is 'model\.layers\.0\.self_attn\.q_proj"
                                             r"\.weight' in the torch checkpoint but 'model\.layers\.0\.input_layernorm"):
            LLRAdamW(model, backend="torch").load_torch_state_dict(swapped)
    with pytest.raises(ValueError, match=r"param groups of sizes \[21\], this optimizer \[16, 5\]"):
        LLRAdamW(decay_groups(model), model=model, backend="torch").load_torch_state_dict(sd)
    with pytest.raises(ValueError, match="'llr' entry.*load_state_dict"):
        opt.load_torch_state_dict(opt.state_dict())
