"""``add_param_group`` on LLRAdamW and LLRMuon: new parameters are classified, measured and stepped like the others.

References: torch.optim.AdamW / torch.optim.Muon built the same way (same groups, same add_param_group call at the
same step), and numpy Eq. 2 / Eq. 3 (tests/reference.py) for the multipliers of the added layers.
"""
from __future__ import annotations

import copy
import warnings

import pytest
import torch

from conftest import backend_param, needs, torch_muon_missing
from llr_kernels import LLRAdamW, LLRMuon
from reference import alpha_np, eq3, torch_muon_ns_f64
from tiny_models import SpectralNet, TinyLlama, batches, lm_loss

pytestmark = pytest.mark.usefixtures("nan_fill")
CPU = torch.device("cpu")


def split_llama(model: TinyLlama) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Embedding and the first block (built on), then the rest (added later)."""
    first = [model.model.embed_tokens.weight, *model.model.layers[0].parameters()]
    ids = {id(p) for p in first}
    return first, [p for p in model.parameters() if id(p) not in ids]


def resync(model, opt, ref_model, ref) -> None:
    """Give the reference our parameters and AdamW state, so that the next step is compared from the same state
    (across steps, float32 kernels and torch's order of operations drift apart where gradients are ~eps)."""
    with torch.no_grad():
        for p, q in zip(model.parameters(), ref_model.parameters()):
            q.copy_(p)
            st = opt.state.get(p, {})
            if "exp_avg" in st:
                ref.state[q] = {"step": torch.tensor(float(st["step"])), "exp_avg": st["exp_avg"].clone(),
                                "exp_avg_sq": st["exp_avg_sq"].clone()}


def backward(model, idx) -> None:
    model.zero_grad(set_to_none=True)
    lm_loss(model, idx).backward()


@pytest.mark.parametrize("backend", [backend_param("torch", CPU), backend_param("cpp", CPU)])
def test_adamw_built_on_part_then_added_equals_torch_adamw(backend, seed):
    torch.manual_seed(seed)
    model = TinyLlama()
    ref_model = copy.deepcopy(model)
    first, rest = split_llama(model)
    ref_first, ref_rest = split_llama(ref_model)
    opt = LLRAdamW([{"params": first}], model=model, lr=3e-3, betas=(0.9, 0.95), weight_decay=0.1, s=1.0,
                   interval=3, backend=backend)
    ref = torch.optim.AdamW([{"params": ref_first}], lr=3e-3, betas=(0.9, 0.95), weight_decay=0.1, foreach=False)
    extra = {"lr": 2e-3, "weight_decay": 0.05}
    for t, idx in enumerate(batches(7, seed=seed)):
        if t == 2:  # after the launch tables were built and used
            opt.add_param_group({"params": rest, **extra})
            ref.add_param_group({"params": ref_rest, **extra})
        if backend != "torch":
            resync(model, opt, ref_model, ref)
        for m, o in ((model, opt), (ref_model, ref)):
            backward(m, idx)
            o.step()
        for (n, p), q in zip(model.named_parameters(), ref_model.parameters()):
            if backend == "torch":
                assert torch.equal(p, q), f"step {t}, {n}"
            else:  # one step from the same state: float32 kernel math, a few ulps (a wrong LR is ~1e-3 off)
                torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-8, msg=lambda s, n=n: f"step {t}, {n}: {s}")
    names = [l.name for l in opt.layers]
    assert names == [n for n, _ in model.named_parameters()][:len(first)] + [
        n for n, p in model.named_parameters() if any(p is r for r in rest)]
    assert opt.layers[opt.layer_of(model.lm_head.weight)].kind == "lm_head"  # named by the model given at construction
    assert opt.param_groups[1]["lr"] == 2e-3 and opt.param_groups[1]["betas"] == (0.9, 0.95)  # defaults filled in
    assert opt.llr.num_updates == 3 and len(opt.llr.alphas) == len(opt.layers)  # steps 0, 3, 6 measured all layers


def test_added_layers_are_measured_at_the_next_update_and_stepped_with_their_lr():
    """SpectralNet's matrices have power-law spectra: every alpha with >= 16 eigenvalues is finite and distinct.
    Built on embed/q/up (+ norm); down, the narrow pair and the head are added after step 0. Until the update at
    step 3 the added layers keep multiplier 1; from it on every layer follows Eq. 3 over all measured alphas. A
    torch AdamW with one group per tensor, LR set by hand to lr x the expected multiplier, must follow."""
    s, lr, wd, interval = 3.0, 1e-3, 0.1, 3
    model = SpectralNet()
    ref_model = copy.deepcopy(model)
    names = [n for n, _ in model.named_parameters()]
    first = ["embed_tokens.weight", "q_proj.weight", "up_proj.weight", "up_proj.bias", "norm.weight"]
    rest = [n for n in names if n not in first]
    params, ref_params = dict(model.named_parameters()), dict(ref_model.named_parameters())
    opt = LLRAdamW([{"params": [params[n] for n in first]}], model=model, lr=lr, weight_decay=wd, s=s,
                   interval=interval, min_eigs=16, backend="torch")
    ref = torch.optim.AdamW([{"params": [ref_params[n]]} for n in first], lr=lr, weight_decay=wd, foreach=False)
    order = list(first)  # layer order of the optimizer
    want: dict[str, float] = {n: 1.0 for n in first}

    def measure() -> None:
        alphas = [alpha_np(ref_params[n], "paper", 16) if ref_params[n].dim() == 2 else float("nan") for n in order]
        mult = eq3(alphas, s, [n == "embed_tokens.weight" for n in order], previous=[want.get(n, 1.0) for n in order])
        want.update(zip(order, mult))

    for t, idx in enumerate(batches(6, vocab=SpectralNet.VOCAB, bsz=8, seq=12)):
        if t == 1:
            opt.add_param_group({"params": [params[n] for n in rest]})
            for n in rest:
                ref.add_param_group({"params": [ref_params[n]]})
            order += rest
            want.update({n: 1.0 for n in rest})
        if t % interval == 0:
            measure()
        for m, o in ((model, opt), (ref_model, ref)):
            backward(m, idx)
        for g, n in zip(ref.param_groups, order):
            g["lr"] = lr * want[n]
        opt.step()
        ref.step()
        got = dict(zip([l.name for l in opt.layers], opt.llr.multipliers(t).tolist()))
        assert got == pytest.approx(want, abs=5e-4), f"step {t}"
        for n in order:
            torch.testing.assert_close(params[n], ref_params[n], rtol=1e-5, atol=5e-6, msg=lambda m, n=n: f"step {t}, {n}: {m}")
    stats = {r["name"]: r for r in opt.layer_stats()}
    assert stats["lm_head.weight"]["kind"] == "lm_head" and stats["down_proj.weight"]["kind"] == "ffn_down"
    assert stats["down_proj.weight"]["status"] == "ok" and stats["narrow_in.weight"]["status"] == "too_few_eigenvalues"
    assert want["down_proj.weight"] > 1.5 and want["lm_head.weight"] == pytest.approx(s)  # the map moved them


@needs(torch_muon_missing(), "torch.optim.Muon")
def test_muon_group_without_use_muon_is_split_and_equals_torch_muon(monkeypatch, seed):
    """s = 1, float64 Newton-Schulz on both sides (as test_muon.py); the added group has no use_muon."""
    import torch.optim._muon as torch_muon

    monkeypatch.setattr(torch_muon, "_zeropower_via_newtonschulz", torch_muon_ns_f64)
    torch.manual_seed(seed)
    model = SpectralNet()
    ref_model = copy.deepcopy(model)
    p, q = dict(model.named_parameters()), dict(ref_model.named_parameters())
    first = ["embed_tokens.weight", "q_proj.weight", "up_proj.weight", "up_proj.bias"]
    rest = [n for n in p if n not in first]
    opt = LLRMuon([{"params": [p[n] for n in first]}], model=model, lr=0.02, adamw_lr=2e-3, weight_decay=0.1, s=1.0,
                  ns_dtype=torch.float64, backend="torch", interval=2)
    ref_muon = torch.optim.Muon([q["q_proj.weight"], q["up_proj.weight"]], lr=0.02, weight_decay=0.1)
    ref_adamw = torch.optim.AdamW([q["embed_tokens.weight"], q["up_proj.bias"]], lr=2e-3, weight_decay=0.1, foreach=False)
    for t, idx in enumerate(batches(6, vocab=SpectralNet.VOCAB, bsz=4, seq=10, seed=seed)):
        if t == 2:
            opt.add_param_group({"params": [p[n] for n in rest], "lr": 0.01})
            hidden = [n for n in rest if q[n].dim() == 2 and n != "lm_head.weight"]
            ref_muon.add_param_group({"params": [q[n] for n in hidden], "lr": 0.01})
            ref_adamw.add_param_group({"params": [q[n] for n in rest if n not in hidden], "lr": 2e-3})
        backward(model, idx)
        backward(ref_model, idx)
        opt.step()
        ref_muon.step()
        ref_adamw.step()
        for n in p:
            torch.testing.assert_close(p[n], q[n], rtol=0, atol=1e-6, msg=lambda m, n=n: f"step {t}, {n}: {m}")
    assert [(g["use_muon"], len(g["params"]), g["lr"]) for g in opt.param_groups] == [
        (True, 2, 0.02), (False, 2, 2e-3), (True, 3, 0.01), (False, 2, 2e-3)]
    assert {r["name"]: r["optimizer"] for r in opt.layer_stats()}["lm_head.weight"] == "adamw"


@pytest.mark.parametrize("cls", [LLRAdamW, LLRMuon])
def test_a_rejected_group_leaves_the_optimizer_as_it_was(cls):
    model = TinyLlama()
    first, rest = split_llama(model)
    opt = cls([{"params": first}], model=model, s=1.0, backend="torch")
    before = (len(opt.param_groups), len(opt.layers), opt.multipliers().clone())
    with pytest.raises(ValueError, match="already in a param group"):
        opt.add_param_group({"params": [rest[0], first[0]]})
    with pytest.raises(ValueError, match="param group .*lr"):
        opt.add_param_group({"params": rest, "lr": -1.0})
    with pytest.raises(TypeError, match="'params' entry"):
        opt.add_param_group([rest])
    assert (len(opt.param_groups), len(opt.layers)) == before[:2] and torch.equal(opt.multipliers(), before[2])
    opt.add_param_group({"params": rest})  # and the same parameters can still be added
    backward(model, batches(1)[0])
    opt.step()
    assert len(opt.layers) == len(list(model.parameters()))


def test_unnamed_tensors_added_without_a_model_get_generated_names_and_a_warning():
    model = TinyLlama()
    first, rest = split_llama(model)
    opt = LLRAdamW(list(zip(["embed", "w"], first[:2])), s=1.0, backend="torch")
    with pytest.warns(UserWarning, match="without names"):
        opt.add_param_group({"params": rest})
    assert opt.layers[-1].name == f"group1.param{len(rest) - 1}"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # named pairs: no warning
        opt.add_param_group({"params": [("x", first[2])]})
    assert opt.layers[-1].name == "x"


def test_an_added_embedding_is_classified_by_its_module_and_pinned():
    """An nn.Embedding whose name says nothing ("table.weight") is an embedding by its module type, also when it
    joins through add_param_group: kind "embedding", pinned at s from the start and after an update, as when
    the constructor gets it."""
    from torch import nn

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.table = nn.Embedding(64, 48)
            self.proj = nn.Linear(48, 48, bias=False)

    model = Net()
    built = LLRAdamW(model, lr=1e-3, s=3.0, min_eigs=16, backend="torch")
    assert [(l.name, l.kind) for l in built.layers] == [("table.weight", "embedding"), ("proj.weight", "linear")]
    opt = LLRAdamW([model.proj.weight], model=model, lr=1e-3, s=3.0, min_eigs=16, backend="torch")
    opt.add_param_group({"params": [model.table.weight]})
    stats = {r["name"]: r for r in opt.layer_stats()}
    assert stats["table.weight"]["kind"] == "embedding"
    assert opt.llr.pinned.tolist() == [False, True]
    assert stats["table.weight"]["multiplier"] == 3.0 and stats["proj.weight"]["multiplier"] == 1.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # one usable layer: Eq. 3 has no range
        opt.update_alphas(0)
    assert opt.multipliers().tolist() == [1.0, 3.0]
