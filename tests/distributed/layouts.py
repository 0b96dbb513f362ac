"""The parallel layouts of a large-scale stack on gloo CPU ranks, for the layout tests: a small LLaMA whose
attention works on any number of local heads (tensor parallel), torchtitan's tensor/sequence-parallel plan, and
the 1-D TP, FSDP x TP and HSDP wrappings. Each rank gets its rows of the global batch (none under pure TP)."""
from __future__ import annotations

import copy

import torch
from torch import nn

from tiny_models import lm_loss

from llr_kernels import LLRAdamW, LLRMuon

VOCAB, D, HEAD_DIM, FFN, SEQ = 48, 32, 8, 64, 9  # SEQ - 1 = 8 positions: sequence shards of 4 on 2 TP ranks
STEPS, BSZ = 4, 4
# updates before steps 0 (gradients) and 2 (weights); clipping active (the global norm is about 3-4)
COMMON = dict(s=3.0, interval=2, total_steps=STEPS, grad_phase=0.25, min_eigs=8, max_grad_norm=0.5, backend="torch",
              hill_method="exact")
KW = {
    "LLRAdamW": dict(lr=2e-2, weight_decay=0.1, **COMMON),
    "LLRAdamW-momentum": dict(lr=2e-2, weight_decay=0.1, grad_alpha_source="momentum", **{**COMMON, "grad_phase": 0.75}),
    # two micro-batches accumulated into zeroed (not None) grads: after a step the grads keep the parameters'
    # placements, and the next backward accumulates Replicate / Partial grads into them
    "LLRAdamW-accumulate": dict(lr=2e-2, weight_decay=0.1, **COMMON),
    # the C++ extension's fused step (the same alignment of grads before it)
    "LLRAdamW-cpp": dict(lr=2e-2, weight_decay=0.1, **{**COMMON, "backend": "cpp"}),
    # chunks of about two matrices (float64: 8-byte gathered copies): gathered, measured and freed in turn
    "LLRAdamW-budget": dict(lr=2e-2, weight_decay=0.1, spectral_memory_budget=2 * 60_000, **COMMON),
    "LLRMuon": dict(lr=0.05, adamw_lr=2e-2, weight_decay=0.1, ns_dtype=torch.float64, **{**COMMON, "s": 2.0}),
    # Newton-Schulz in chunks of about two matrices per owner (and the LLR update in chunks)
    "LLRMuon-budget": dict(lr=0.05, adamw_lr=2e-2, weight_decay=0.1, ns_dtype=torch.float64, spectral_memory_budget=150_000,
                           **{**COMMON, "s": 2.0}),
}


class Attention(nn.Module):
    def __init__(self, d: int) -> None:
        super().__init__()
        for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
            self.add_module(name, nn.Linear(d, d, bias=False))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        b, t = h.shape[0], h.shape[1]
        q, k, v = (m(h).view(b, t, -1, HEAD_DIM).transpose(1, 2) for m in (self.q_proj, self.k_proj, self.v_proj))
        att = nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.o_proj(att.transpose(1, 2).reshape(b, t, -1))  # -1: the local heads under tensor parallel


class MLP(nn.Module):
    def __init__(self, d: int, ffn: int) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(d, ffn, bias=False)
        self.up_proj = nn.Linear(d, ffn, bias=False)
        self.down_proj = nn.Linear(ffn, d, bias=False)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.down_proj(nn.functional.silu(self.gate_proj(h)) * self.up_proj(h))


class Block(nn.Module):
    def __init__(self, d: int, ffn: int) -> None:
        super().__init__()
        self.input_layernorm = nn.RMSNorm(d)
        self.self_attn = Attention(d)
        self.post_attention_layernorm = nn.RMSNorm(d)
        self.mlp = MLP(d, ffn)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x))
        return x + self.mlp(self.post_attention_layernorm(x))


class TPLlama(nn.Module):
    """LLaMA with Hugging Face parameter names (so LLR classifies embedding, LM head, norms) and no module that
    assumes it holds every head."""

    def __init__(self, layers: int = 2) -> None:
        super().__init__()
        self.model = nn.Module()
        self.model.embed_tokens = nn.Embedding(VOCAB, D)
        self.model.layers = nn.ModuleList(Block(D, FFN) for _ in range(layers))
        self.model.norm = nn.RMSNorm(D)
        self.lm_head = nn.Linear(D, VOCAB, bias=False)
        with torch.no_grad():  # norms away from 1, so a wrong norm step shows
            for n, p in self.named_parameters():
                if p.dim() == 1:
                    p.uniform_(0.5, 1.5)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        x = self.model.embed_tokens(idx)
        for blk in self.model.layers:
            x = blk(x)
        return self.lm_head(self.model.norm(x))


def batches(n: int, bsz: int, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, VOCAB, (bsz, SEQ), generator=g) for _ in range(n)]


def tensor_parallel(model: TPLlama, tp_mesh, sequence_parallel: bool = True) -> TPLlama:
    """torchtitan's plan: embedding rowwise with replicated token ids, attention / MLP colwise then rowwise, LM head
    colwise; with ``sequence_parallel`` the norms run on sequence shards (their grads come out Partial)."""
    from torch.distributed.tensor import Replicate, Shard
    from torch.distributed.tensor.parallel import (
        ColwiseParallel,
        PrepareModuleInput,
        RowwiseParallel,
        SequenceParallel,
        parallelize_module,
    )

    seq = Shard(1) if sequence_parallel else Replicate()
    plan = {
        "model.embed_tokens": RowwiseParallel(input_layouts=Replicate(), output_layouts=seq),
        "lm_head": ColwiseParallel(input_layouts=seq, output_layouts=Replicate()),
    }
    if sequence_parallel:
        plan["model.norm"] = SequenceParallel()
    for i in range(len(model.model.layers)):
        b = f"model.layers.{i}."
        plan.update({
            b + "self_attn": PrepareModuleInput(input_layouts=(seq,), desired_input_layouts=(Replicate(),)),
            b + "self_attn.q_proj": ColwiseParallel(),
            b + "self_attn.k_proj": ColwiseParallel(),
            b + "self_attn.v_proj": ColwiseParallel(),
            b + "self_attn.o_proj": RowwiseParallel(output_layouts=seq),
            b + "mlp": PrepareModuleInput(input_layouts=(seq,), desired_input_layouts=(Replicate(),)),
            b + "mlp.gate_proj": ColwiseParallel(),
            b + "mlp.up_proj": ColwiseParallel(),
            b + "mlp.down_proj": RowwiseParallel(output_layouts=seq),
        })
        if sequence_parallel:
            plan[b + "input_layernorm"] = SequenceParallel()
            plan[b + "post_attention_layernorm"] = SequenceParallel()
    return parallelize_module(model, tp_mesh, plan)


def build(layout: str, model: TPLlama):
    """Wrap ``model`` in place for ``layout``; returns (its data-parallel rank, data-parallel size) for the batch.

    "tp": 1-D tensor + sequence parallel over the world (every rank sees the whole batch);
    "tp-plain-norms": the same without sequence parallel (the norms stay plain tensors);
    "fsdp-tp": 2-D mesh (dp, tp), FSDP2 over dp of the TP model; "hsdp": 2-D mesh (replicate, shard), FSDP2 with
    replicated shard groups; "fsdp": 1-D FSDP2."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    world, rank = dist.get_world_size(), dist.get_rank()
    if layout in ("tp", "tp-plain-norms"):
        tensor_parallel(model, init_device_mesh("cpu", (world,)), sequence_parallel=layout == "tp")
        return 0, 1
    if layout == "fsdp":
        mesh = init_device_mesh("cpu", (world,))
        for blk in model.model.layers:
            fully_shard(blk, mesh=mesh)
        fully_shard(model, mesh=mesh)
        return rank, world
    if layout == "fsdp-tp":
        mesh = init_device_mesh("cpu", (world // 2, 2), mesh_dim_names=("dp", "tp"))
        tensor_parallel(model, mesh["tp"])
        for blk in model.model.layers:
            fully_shard(blk, mesh=mesh["dp"])
        fully_shard(model, mesh=mesh["dp"])
        return mesh["dp"].get_local_rank(), mesh["dp"].size()
    if layout == "hsdp":
        mesh = init_device_mesh("cpu", (2, world // 2), mesh_dim_names=("replicate", "shard"))
        for blk in model.model.layers:
            fully_shard(blk, mesh=mesh)
        fully_shard(model, mesh=mesh)
        return rank, world
    raise ValueError(layout)


def make_opt(name: str, model: torch.nn.Module):
    if name == "torch.AdamW":
        return torch.optim.AdamW(model.parameters(), lr=2e-2, weight_decay=0.1, foreach=False)
    if name == "LLRAdamW-s1":  # uniform multipliers: exactly AdamW
        return LLRAdamW(model, lr=2e-2, weight_decay=0.1, s=1.0, backend="torch")
    cls = LLRMuon if name.startswith("LLRMuon") else LLRAdamW
    return cls(model, **KW[name])


def full_state(model: torch.nn.Module) -> dict:
    return {k: (v.full_tensor() if hasattr(v, "full_tensor") else v).detach().clone() for k, v in model.state_dict().items()}


def run_case(layout: str, name: str, init: dict, counted: list) -> dict:
    """Train STEPS steps on ``layout``; what every rank ends with."""
    model = TPLlama().double()
    model.load_state_dict(init)
    dp_rank, dp_size = build(layout, model)
    opt = make_opt(name, model)
    counted[0] = counted[1] = 0
    rows = BSZ // dp_size
    for idx in batches(STEPS, BSZ):
        backward(model, opt, name, idx[dp_rank * rows:(dp_rank + 1) * rows])
        opt.step()
    out = {"params": full_state(model), "measured": counted[0], "measure_calls": counted[1]}
    if hasattr(opt, "llr"):
        muon = getattr(opt, "_muon_split", None)
        out.update(alphas=opt.llr.alphas.clone(), mult=opt.multipliers(), split=opt.last_split,
                   grad_norm=None if opt.last_grad_norm is None else float(opt.last_grad_norm), status=list(opt.layer_status),
                   orthogonalized=None if muon is None else muon.last_orthogonalized,
                   muon_chunks=None if muon is None else len(muon.chunks))
    return out


def backward(model: torch.nn.Module, opt, name: str, rows: torch.Tensor) -> None:
    """Fresh grads of the mean loss over ``rows``: one backward, or ("-accumulate") grads zeroed in place and two
    micro-batches of half the rows each, their losses halved."""
    if not name.endswith("-accumulate"):
        opt.zero_grad()
        lm_loss(model, rows).backward()
        return
    opt.zero_grad(set_to_none=False)
    half = rows.shape[0] // 2
    for part in (rows[:half], rows[half:]):
        (lm_loss(model, part) / 2).backward()


def count_measurements() -> list:
    """Counts the matrices this rank hands to the spectral measurement (patched in the worker)."""
    from llr_kernels.optim import spectral_update

    counted = [0, 0]  # matrices, calls
    original = spectral_update.measure_matrices

    def counting(opt, mats, stacked=None):
        counted[0] += len(mats)
        counted[1] += 1
        return original(opt, mats, stacked)

    spectral_update.measure_matrices = counting
    return counted


def single_process(name: str, init: dict) -> tuple[torch.nn.Module, object, float | None]:
    """The same optimizer in one process on the whole batch, its grads clipped by torch's clip_grad_norm_ (float64)
    instead of its own max_grad_norm; returns the model, the optimizer and the last norm before clipping."""
    model = TPLlama().double()
    model.load_state_dict(copy.deepcopy(init))
    max_norm = KW.get(name, {}).get("max_grad_norm")
    opt = make_opt(name, model)
    if max_norm is not None:
        opt.max_grad_norm = None
    norm = None
    for idx in batches(STEPS, BSZ):
        backward(model, opt, name, idx)
        if max_norm is not None:
            norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm))
        opt.step()
    return model, opt, norm


def max_diff(a: dict, b: dict) -> tuple[float, str]:
    return max((float((a[k] - b[k]).abs().max()), k) for k in a)


def assert_matches_single_process(runs: list[dict], name: str, init: dict, tol: float = 1e-12) -> None:
    """Each rank's run of ``name`` ends where one process on the whole batch does (parameters to ``tol``, alphas,
    multipliers, clipped norm, statuses), and all ranks end bitwise alike (parameters, alphas, multipliers)."""
    model, opt, norm = single_process(name, init)
    ref = full_state(model)
    assert opt.llr.alphas.isfinite().sum() >= 10, "the test needs measured alphas"
    assert norm > KW[name]["max_grad_norm"], "the test needs active clipping"
    assert len(set(opt.multipliers().tolist())) > 3, "the test needs distinct multipliers"
    if KW[name].get("grad_alpha_source") == "momentum":
        assert opt.policy.source(2) == "grad", "the test needs a gradient-phase update after a step (exp_avg read)"
    for r in runs:
        diff, key = max_diff(r["params"], ref)
        assert diff <= tol, (key, diff)
        assert torch.allclose(r["alphas"], opt.llr.alphas, rtol=0, atol=1e-10, equal_nan=True)
        assert torch.allclose(r["mult"], opt.multipliers(), rtol=0, atol=1e-10)
        assert abs(r["grad_norm"] - norm) <= 1e-12 * norm
        assert r["status"] == list(opt.layer_status)
    a = runs[0]
    for b in runs[1:]:
        assert torch.equal(a["mult"], b["mult"]) and torch.equal(a["alphas"].nan_to_num(), b["alphas"].nan_to_num())
        for k in a["params"]:
            assert torch.equal(a["params"][k], b["params"][k]), k  # replicated parameters agree across ranks


def assert_measured_once(runs: list[dict], name: str, init: dict, updates: int) -> None:
    """Over ``updates`` LLR updates each matrix reached the measurement on exactly one rank per update, every rank
    took a share, and under LLRMuon each Muon matrix was orthogonalized on one rank in the last step."""
    model = TPLlama()
    opt = make_opt(name, model)
    matrices = sum(layer.is_matrix for layer in opt.layers)
    world = len(runs)
    assert sum(r["measured"] for r in runs) == updates * matrices
    assert all(0 < r["measured"] < updates * matrices for r in runs)
    splits = [r["split"] for r in runs]
    assert [s["layout"] for s in splits] == ["dtensor"] * world and sum(s["layers_measured"] for s in splits) == matrices
    assert sorted(s["rank"] for s in splits) == list(range(world))
    budget = KW.get(name, {}).get("spectral_memory_budget")
    if budget is not None:  # every chunk under the budget, several chunks per update on every rank
        assert all(0 < s["chunk_peak_estimate"] <= budget for s in splits)
        assert all(r["measure_calls"] >= 2 * updates for r in runs)
        if name.startswith("LLRMuon"):  # Newton-Schulz in several chunks too
            assert all(r["muon_chunks"] >= 2 for r in runs)
    if name.startswith("LLRMuon"):
        n_muon = len(opt.param_groups[0]["params"])
        done = [r["orthogonalized"] for r in runs]
        assert sum(done) == n_muon and all(0 < d < n_muon for d in done), done
