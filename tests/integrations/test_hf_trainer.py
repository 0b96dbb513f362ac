"""Unnamed parameters, and LLRAdamW inside Hugging Face ``Trainer`` (a tiny LlamaForCausalLM built from a config).

* ``LLRAdamW(model.parameters())`` cannot know which matrix is the embedding: it warns once and says how to pass
  the model; with the model the embedding is pinned at s.
* The two documented Trainer recipes (``optimizers=(LLRAdamW(model, ...), None)`` and
  ``optimizer_cls_and_kwargs=(LLRAdamW, {"model": model, ...})``) train, pin the embedding, and give layer stats
  through accelerate's optimizer wrapper (``llr_kernels.layer_stats(trainer.optimizer)``). At s = 1 the first
  recipe equals Trainer with torch.optim.AdamW bit for bit (torch backend). No downloads: HF_HUB_OFFLINE=1.
"""
from __future__ import annotations

import copy
import importlib.util
import os
import warnings

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before transformers is imported: never reach the network

import pytest
import torch

from conftest import require
from llr_kernels import LLRAdamW, LLRMuon, layer_stats, unwrap
from tiny_models import TinyLlama


def _missing(*mods: str) -> str | None:
    gone = [m for m in mods if importlib.util.find_spec(m) is None]
    return None if not gone else f"{', '.join(gone)} not installed (pip install -e '.[test]')"


def require_trainer() -> None:
    require(_missing("transformers", "accelerate"), "transformers + accelerate (Trainer)")


@pytest.mark.parametrize("cls", [LLRAdamW, LLRMuon])
def test_unnamed_parameters_warn_once_and_the_model_fixes_it(cls):
    model = TinyLlama()
    with pytest.warns(UserWarning, match=r"without names.*cannot tell the embedding.*Pass the model: "
                                         rf"{cls.__name__}\(model, \.\.\.\).*model=model") as rec:
        opt = cls(model.parameters(), backend="torch")
    assert len([w for w in rec if "without names" in str(w.message)]) == 1  # once, not once per parameter
    emb = model.model.embed_tokens.weight
    i = opt.layer_of(emb)
    assert opt.layers[i].kind == "linear" and not bool(opt.llr.pinned[i])  # the embedding is not recognised ...
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for named in (model, model.named_parameters()):
            opt = cls(named, backend="torch")
            i = opt.layer_of(emb)
            assert opt.layers[i].kind == "embedding" and bool(opt.llr.pinned[i])  # ... with names it is
        opt = cls([{"params": list(model.parameters())}], model=model, backend="torch")
        assert opt.layers[opt.layer_of(emb)].kind == "embedding"


def tiny_llama(seed: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=64, tie_word_embeddings=False)
    return LlamaForCausalLM(cfg)


def trainer_for(model, tmp_path, seed: int, steps: int, **kw):
    from transformers import Trainer, TrainingArguments

    g = torch.Generator().manual_seed(seed)
    data = [{"input_ids": x, "labels": x.clone()} for x in torch.randint(0, 128, (16, 12), generator=g)]
    args = TrainingArguments(output_dir=str(tmp_path), max_steps=steps, per_device_train_batch_size=4, learning_rate=1e-3,
                             weight_decay=0.0, lr_scheduler_type="linear", report_to=[], save_strategy="no",
                             logging_strategy="no", use_cpu=True, seed=seed, disable_tqdm=True, dataloader_num_workers=0)
    return Trainer(model=model, args=args, train_dataset=data, **kw)


@pytest.mark.parametrize("recipe", ["optimizers", "optimizer_cls_and_kwargs"])
def test_trainer_recipes_pin_the_embedding_and_reach_the_stats(recipe, tmp_path, seed):
    require_trainer()
    model = tiny_llama(seed)
    kw = dict(lr=1e-3, weight_decay=0.0, s=3.0, interval=2, min_eigs=8, backend="torch")
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*without names")
        if recipe == "optimizers":
            opt = LLRAdamW(model, **kw)
            trainer = trainer_for(model, tmp_path, seed, 4, optimizers=(opt, None))
        else:
            trainer = trainer_for(model, tmp_path, seed, 4, optimizer_cls_and_kwargs=(LLRAdamW, {"model": model, **kw}))
        trainer.train()
    inner = unwrap(trainer.optimizer)
    assert isinstance(inner, LLRAdamW) and (recipe != "optimizers" or inner is opt)
    assert type(trainer.optimizer).__name__ == "AcceleratedOptimizer"  # what layer_stats(...) looks through
    stats = {r["name"]: r for r in layer_stats(trainer.optimizer)}
    emb = stats["model.embed_tokens.weight"]
    assert emb["kind"] == "embedding" and emb["multiplier"] == 3.0
    assert stats["lm_head.weight"]["kind"] == "lm_head"
    assert stats["model.layers.0.self_attn.q_proj.weight"]["kind"] == "attn_q"
    assert inner.llr_step == 4 and inner.llr.num_updates == 2  # steps 0 and 2
    hidden = [r for r in stats.values() if r["kind"] not in ("embedding", "lm_head", "vector")]
    assert len(hidden) == 14 and all(r["status"] == "ok" for r in hidden)
    assert len({round(r["multiplier"], 6) for r in hidden}) > 2  # Eq. 3 spread them over [1, s]


def test_trainer_with_llr_adamw_at_s1_is_trainer_with_torch_adamw(tmp_path, seed):
    require_trainer()
    model = tiny_llama(seed)
    ref_model = copy.deepcopy(model)
    ours = trainer_for(model, tmp_path / "a", seed, 3,
                       optimizers=(LLRAdamW(model, lr=1e-3, weight_decay=0.0, s=1.0, interval=2, backend="torch"), None))
    ref = trainer_for(ref_model, tmp_path / "b", seed, 3,
                      optimizer_cls_and_kwargs=(torch.optim.AdamW, {"lr": 1e-3, "weight_decay": 0.0, "foreach": False}))
    ours.train()
    ref.train()
    for (n, p), q in zip(model.named_parameters(), ref_model.parameters()):
        assert torch.equal(p, q), n
    assert not torch.equal(model.model.embed_tokens.weight, tiny_llama(seed).model.embed_tokens.weight)  # it trained


def test_unwrap_says_what_it_found():
    class Wrapper:
        def __init__(self, inner):
            self.optimizer = inner

    opt = LLRAdamW(TinyLlama(), backend="torch")
    assert unwrap(Wrapper(Wrapper(opt))) is opt and layer_stats(Wrapper(opt))[0]["kind"] == "embedding"
    with pytest.raises(TypeError, match=r"no LLR optimizer \(LLRAdamW / LLRMuon\) inside Wrapper -> AdamW"):
        unwrap(Wrapper(torch.optim.AdamW(TinyLlama().parameters())))


# ----- the Trainer's own parameter groups (llr_kernels.integrations.hf) ---------------------------------------
def decay_trainer(model, tmp_path, seed: int, steps: int, weight_decay: float, **kw):
    """trainer_for with weight decay on: the Trainer then builds a decay and a no-decay group."""
    from transformers import Trainer, TrainingArguments

    g = torch.Generator().manual_seed(seed)
    data = [{"input_ids": x, "labels": x.clone()} for x in torch.randint(0, 128, (16, 12), generator=g)]
    args = TrainingArguments(output_dir=str(tmp_path), max_steps=steps, per_device_train_batch_size=4, learning_rate=1e-3,
                             weight_decay=weight_decay, lr_scheduler_type="linear", report_to=[], save_strategy="no",
                             logging_strategy="no", use_cpu=True, seed=seed, disable_tqdm=True, dataloader_num_workers=0)
    return Trainer(model=model, args=args, train_dataset=data, **kw)


def expected_decay(model, weight_decay: float) -> dict[str, float]:
    """The Trainer's rule, written out: no decay for biases and norms (LlamaRMSNorm weights), decay elsewhere."""
    return {n: (0.0 if n.endswith(".bias") or "norm" in n else weight_decay) for n, _ in model.named_parameters()}


def group_decay(opt) -> dict[int, float]:
    return {id(p): float(g["weight_decay"]) for g in opt.param_groups for p in g["params"]}


def test_helper_keeps_the_trainers_groups_and_equals_torch_adamw_at_s1(tmp_path, seed):
    """At s = 1, LLRAdamW through llr_optimizer_cls_and_kwargs is the Trainer with torch.optim.AdamW on the same
    groups, bit for bit, with weight decay 0.1 on matrices and 0 on norms; both optimizers hold those groups."""
    require_trainer()
    from llr_kernels.integrations.hf import llr_optimizer_cls_and_kwargs

    model = tiny_llama(seed)
    ref_model = copy.deepcopy(model)
    ours = decay_trainer(model, tmp_path / "a", seed, 3, 0.1, optimizer_cls_and_kwargs=llr_optimizer_cls_and_kwargs(
        model, LLRAdamW, lr=1e-3, s=1.0, interval=2, backend="torch"))
    ref = decay_trainer(ref_model, tmp_path / "b", seed, 3, 0.1,
                        optimizer_cls_and_kwargs=(torch.optim.AdamW, {"lr": 1e-3, "foreach": False}))
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*without names")
        ours.train()
    ref.train()
    want = expected_decay(model, 0.1)
    assert set(want.values()) == {0.0, 0.1}
    for m, t in ((model, ours), (ref_model, ref)):
        got = group_decay(unwrap(t.optimizer) if t is ours else t.optimizer.optimizer)
        assert {n: got[id(p)] for n, p in m.named_parameters()} == want
    for (n, p), q in zip(model.named_parameters(), ref_model.parameters()):
        assert torch.equal(p, q), n
    assert not torch.equal(model.model.norm.weight, tiny_llama(seed).model.norm.weight)  # it trained


def test_helper_keeps_layer_kinds_and_per_layer_decay_at_s3(tmp_path, seed):
    require_trainer()
    from llr_kernels.integrations.hf import llr_optimizer_cls_and_kwargs

    model = tiny_llama(seed)
    trainer = decay_trainer(model, tmp_path, seed, 2, 0.1, optimizer_cls_and_kwargs=llr_optimizer_cls_and_kwargs(
        model, LLRAdamW, lr=1e-3, s=3.0, interval=2, min_eigs=8, backend="torch"))
    trainer.train()
    inner = unwrap(trainer.optimizer)
    assert type(inner).__name__ == "LLRAdamW" and isinstance(inner, LLRAdamW)
    stats = {r["name"]: r for r in layer_stats(trainer.optimizer)}
    assert stats["model.embed_tokens.weight"]["kind"] == "embedding"
    assert stats["model.embed_tokens.weight"]["multiplier"] == 3.0  # pinned at s: the model's kinds are known
    assert stats["lm_head.weight"]["kind"] == "lm_head"
    want = expected_decay(model, 0.1)
    for name, row in stats.items():
        assert row["weight_decay"] == pytest.approx(want[name] * row["wd_multiplier"]), name
    assert {r["weight_decay"] for r in stats.values() if r["kind"] == "vector"} == {0.0}


def test_helper_with_llr_muon_keeps_no_decay_in_the_adamw_part(tmp_path, seed):
    """LLRMuon splits each Trainer group into a Muon part (hidden matrices) and an AdamW part (embedding, head,
    norms): the no-decay group's norms stay at 0 in the AdamW part, the decay group's embedding and head at 0.1."""
    require_trainer()
    from llr_kernels.integrations.hf import llr_optimizer_cls_and_kwargs

    model = tiny_llama(seed)
    trainer = decay_trainer(model, tmp_path, seed, 2, 0.1, optimizer_cls_and_kwargs=llr_optimizer_cls_and_kwargs(
        model, LLRMuon, lr=1e-2, adamw_lr=1e-3, weight_decay=0.5, interval=2, backend="torch"))
    trainer.train()
    inner = unwrap(trainer.optimizer)
    got = group_decay(inner)
    assert {n: got[id(p)] for n, p in model.named_parameters()} == expected_decay(model, 0.1)
    muon = {id(p) for g in inner.param_groups if g["use_muon"] for p in g["params"]}
    assert id(model.model.layers[0].self_attn.q_proj.weight) in muon
    assert id(model.model.embed_tokens.weight) not in muon and id(model.lm_head.weight) not in muon


def test_helper_refuses_model_or_params_in_kwargs():
    from llr_kernels.integrations.hf import llr_optimizer_cls_and_kwargs

    model = TinyLlama()
    with pytest.raises(ValueError, match="do not pass 'model' in the kwargs: transformers would take it as the parameters"):
        llr_optimizer_cls_and_kwargs(model, LLRAdamW, model=model)
    with pytest.raises(TypeError, match="optimizer_cls must be LLRAdamW, LLRMuon"):
        llr_optimizer_cls_and_kwargs(model, torch.optim.AdamW)
    cls, kwargs = llr_optimizer_cls_and_kwargs(model, LLRAdamW, lr=2e-3)
    assert kwargs == {"lr": 2e-3} and issubclass(cls, LLRAdamW)
    opt = cls([{"params": [model.model.embed_tokens.weight], "weight_decay": 0.3}], **kwargs)  # unnamed tensors:
    assert opt.layers[0].kind == "embedding" and opt.param_groups[0]["weight_decay"] == 0.3  # named by the model


def test_helper_optimizer_state_dict_round_trips(seed):
    """What Trainer's checkpoints do: save the optimizer's state_dict, build a fresh one the same way, load it; the
    two then take identical steps."""
    from llr_kernels.integrations.hf import llr_optimizer_cls_and_kwargs

    torch.manual_seed(seed)
    model = TinyLlama()
    twin = copy.deepcopy(model)
    groups = lambda m: [{"params": [p for n, p in m.named_parameters() if p.dim() == 2], "weight_decay": 0.1},  # noqa: E731
                        {"params": [p for n, p in m.named_parameters() if p.dim() < 2], "weight_decay": 0.0}]
    cls, kw = llr_optimizer_cls_and_kwargs(model, LLRAdamW, lr=1e-3, interval=2, min_eigs=8, backend="torch")
    opt = cls(groups(model), **kw)
    g = torch.Generator().manual_seed(seed)
    batches = [torch.randint(0, 96, (4, 16), generator=g) for _ in range(4)]
    for idx in batches[:3]:
        model(idx).logsumexp(-1).mean().backward()
        opt.step()
        opt.zero_grad()
    twin.load_state_dict(model.state_dict())
    cls2, kw2 = llr_optimizer_cls_and_kwargs(twin, LLRAdamW, lr=1e-3, interval=2, min_eigs=8, backend="torch")
    opt2 = cls2(groups(twin), **kw2)
    opt2.load_state_dict(copy.deepcopy(opt.state_dict()))  # a saved copy: torch's load keeps same-dtype tensors
    for m, o in ((model, opt), (twin, opt2)):
        m(batches[3]).logsumexp(-1).mean().backward()
        o.step()
    for (n, p), q in zip(model.named_parameters(), twin.parameters()):
        assert torch.equal(p, q), n
    assert opt2.llr_step == opt.llr_step == 4 and opt2.param_groups[1]["weight_decay"] == 0.0
