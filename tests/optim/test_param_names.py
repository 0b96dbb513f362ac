"""Param groups keep torch's "param_names" (torch >= 2.6) whenever the names are known, as torch.optim's own
optimizers do, so code that checkpoints by name (torch's state_dict hooks, DCP helpers, torchtitan) works."""
import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(__file__)))
from tiny_models import TinyLlama, batches, lm_loss  # noqa: E402

from llr_kernels import LLRAdamW, LLRMuon  # noqa: E402

KW = dict(lr=1e-2, min_eigs=8, interval=2, backend="torch")
MUON_KW = dict(lr=2e-2, adamw_lr=1e-2, min_eigs=8, interval=2, ns_dtype=torch.float32, backend="torch")


def make(cls, params, **kw):
    return cls(params, **(KW if cls is LLRAdamW else MUON_KW), **kw)


def torch_names(params) -> list[list[str]]:
    """The param_names that torch.optim.AdamW keeps for the same params argument: the reference."""
    return [g["param_names"] for g in torch.optim.AdamW(params).state_dict()["param_groups"]]


def names_of(opt) -> list[str]:
    return [n for g in opt.state_dict()["param_groups"] for n in g.get("param_names", [])]


@pytest.mark.parametrize("form", ["model", "named", "groups-of-pairs", "groups-with-param_names", "tensors+model"])
@pytest.mark.parametrize("cls", [LLRAdamW, LLRMuon], ids=lambda c: c.__name__)
def test_names_kept_as_torch_keeps_them(cls, form):
    model = TinyLlama()
    named = list(model.named_parameters())
    half = len(named) // 2
    pairs = [{"params": named[:half]}, {"params": named[half:], "weight_decay": 0.0}]
    params = {"model": model, "named": named, "groups-of-pairs": pairs,
              "groups-with-param_names": [{"params": [p for _, p in g["params"]], "param_names": [n for n, _ in g["params"]],
                                           **{k: v for k, v in g.items() if k != "params"}} for g in pairs],
              "tensors+model": [p for _, p in named]}[form]
    opt = make(cls, params, model=model if form == "tensors+model" else None)
    expected = [n for g in torch_names(named if form in ("model", "named", "tensors+model") else pairs) for n in g]
    got = names_of(opt)
    if cls is LLRAdamW:
        assert got == expected
    else:  # LLRMuon splits groups into Muon and AdamW parts: each name still sits beside its tensor
        assert sorted(got) == sorted(expected)
    by_id = {id(p): n for n, p in named}
    for g in opt.param_groups:
        assert [by_id[id(p)] for p in g["params"]] == g["param_names"]
    kinds = {l.name: l.kind for l in opt.layers}
    assert kinds["model.embed_tokens.weight"] == "embedding" and kinds["lm_head.weight"] == "lm_head", \
        "names given through param_names must also classify the layers"


def test_no_names_when_unknown():
    """Plain tensors without a model: no names to keep (as torch.optim with tensors), and no invented ones."""
    model = TinyLlama()
    with pytest.warns(UserWarning, match="without names"):
        opt = LLRAdamW(list(model.parameters()), **KW)
    assert all("param_names" not in g for g in opt.state_dict()["param_groups"])
    with pytest.warns(UserWarning, match="without names"):
        muon = LLRMuon(list(model.parameters()), **MUON_KW)
    assert all("param_names" not in g for g in muon.param_groups)


def test_add_param_group_keeps_names_consistent():
    """torch wants all groups with names or none: an added group follows the existing ones."""
    model = TinyLlama()
    extra = torch.nn.Linear(64, 64, bias=False)
    opt = LLRAdamW(model, **KW)
    opt.add_param_group({"params": [("extra.weight", extra.weight)]})
    assert opt.param_groups[-1]["param_names"] == ["extra.weight"]
    assert names_of(opt)[-1] == "extra.weight"


def test_state_dict_round_trip_keeps_names():
    """torch's state_dict carries the names; load_state_dict into a fresh optimizer keeps them beside the same
    tensors, and a state_dict whose groups have no names (an older checkpoint) leaves ours in place (torch's rule)."""
    model = TinyLlama()
    opt = LLRAdamW(model, **KW)
    lm_loss(model, batches(1)[0]).backward()
    opt.step()
    sd = opt.state_dict()
    opt2 = LLRAdamW(model, **KW)
    opt2.load_state_dict(sd)
    assert names_of(opt2) == names_of(opt) == [n for n, _ in model.named_parameters()]
    old = {**sd, "param_groups": [{k: v for k, v in g.items() if k != "param_names"} for g in sd["param_groups"]]}
    opt3 = LLRAdamW(model, **KW)
    opt3.load_state_dict(old)
    assert names_of(opt3) == names_of(opt)
