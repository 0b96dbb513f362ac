"""Checkpoint loading (llr_kernels/analysis/loading.py, run.plan_chunks): every format finds the same matrices with
the right shapes, kinds and values; reading is lazy and shard after shard; bad input gets a clear message."""
from __future__ import annotations

import json

import pytest
import torch
from conftest import requires
from reference import alpha_np
from torch import nn

from llr_kernels.analysis import CheckpointError, analyze, open_checkpoint
from llr_kernels.analysis.run import chunk_bytes, plan_chunks
from llr_kernels.layers import kind_from_name

try:
    import safetensors.torch as safetensors
except ImportError:  # the test extra installs it
    safetensors = None
pytestmark = requires(None if safetensors else "not installed (pip install safetensors)", "safetensors")


def state(seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    return {
        "model.embed_tokens.weight": r(300, 64),
        "model.layers.0.self_attn.q_proj.weight": r(64, 64),
        "model.layers.0.self_attn.q_proj.bias": r(64),
        "model.layers.0.mlp.up_proj.weight": r(128, 64).to(torch.bfloat16),
        "model.layers.1.self_attn.q_proj.weight": r(64, 64).half(),
        "model.layers.1.mlp.down_proj.weight": r(64, 128),
        "model.norm.weight": r(64),
        "position_ids": torch.arange(10).reshape(1, 10),
    }


MATRICES = ["model.embed_tokens.weight", "model.layers.0.self_attn.q_proj.weight", "model.layers.0.mlp.up_proj.weight",
            "model.layers.1.self_attn.q_proj.weight", "model.layers.1.mlp.down_proj.weight"]


def check(ck, sd):
    assert sorted(r.name for r in ck.refs) == sorted(MATRICES)  # safetensors stores names sorted
    for r in ck.refs:
        t = r.load()
        assert r.shape == tuple(sd[r.name].shape) and r.dtype == sd[r.name].dtype
        assert torch.equal(t, sd[r.name])
        p = torch.empty(r.shape, device="meta", requires_grad=True)
        assert r.kind == kind_from_name(r.name, p)
    assert set(ck.skipped) == {"model.layers.0.self_attn.q_proj.bias", "model.norm.weight", "position_ids"}


def test_safetensors_file(tmp_path, seed):
    sd = state(seed)
    path = tmp_path / "model.safetensors"
    safetensors.save_file(sd, str(path))
    check(open_checkpoint(path), sd)


def test_sharded_folder_reads_one_shard_after_another(tmp_path, seed, monkeypatch):
    sd = state(seed)
    names = list(sd)
    shards = {"model-00001-of-00002.safetensors": names[:4], "model-00002-of-00002.safetensors": names[4:]}
    for f, ks in shards.items():
        safetensors.save_file({k: sd[k] for k in ks}, str(tmp_path / f))
    weight_map = {k: f for f, ks in shards.items() for k in ks}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    ck = open_checkpoint(tmp_path)
    check(ck, sd)
    assert [s for s, _ in ck.shards] == list(shards)
    # analyze loads tensors shard by shard, never going back to a shard it left, and nothing at open time
    import safetensors as st_mod

    calls = []
    real = st_mod.safe_open

    class Spy:
        def __init__(self, path, **kw):
            self.path, self.f = path, real(path, **kw)

        def __enter__(self):
            self.f.__enter__()
            return self

        def __exit__(self, *a):
            return self.f.__exit__(*a)

        def __getattr__(self, k):
            if k == "get_tensor":
                calls.append(self.path.rsplit("/", 1)[-1])
            return getattr(self.f, k)

    monkeypatch.setattr(st_mod, "safe_open", Spy)
    ck = open_checkpoint(tmp_path)
    assert calls == [], "opening read tensor data"
    analyze(tmp_path, metrics=("alpha",), progress=False)
    assert len(calls) == len(MATRICES)
    order = list(dict.fromkeys(calls))
    assert order == list(shards) and calls == sorted(calls, key=order.index)


def test_torch_state_dict_and_full_checkpoint(tmp_path, seed):
    sd = state(seed)
    torch.save(sd, tmp_path / "sd.pt")
    check(open_checkpoint(tmp_path / "sd.pt"), sd)
    full = {"model": sd, "optimizer": {"state": {0: {"exp_avg": torch.ones(3, 3)}}}, "step": 7}
    torch.save(full, tmp_path / "full.ckpt")
    check(open_checkpoint(tmp_path / "full.ckpt"), sd)


def test_module_and_tied_weights(seed):
    torch.manual_seed(seed)
    emb = nn.Embedding(100, 32)
    head = nn.Linear(32, 100, bias=False)
    head.weight = emb.weight  # tied
    model = nn.ModuleDict({"embed": emb, "proj": nn.Linear(32, 32), "lm_head": head})
    ck = open_checkpoint(model)
    assert [(r.name, r.kind) for r in ck.refs] == [("embed.weight", "embedding"), ("proj.weight", "linear")]
    sd = model.state_dict()  # the tied weight appears twice; measured once
    ck2 = open_checkpoint(sd)
    assert [r.name for r in ck2.refs] == ["embed.weight", "proj.weight"] and "lm_head.weight" in ck2.skipped


def test_chunks_stay_under_the_budget(tmp_path, seed):
    torch.manual_seed(seed)
    sd = {f"layers.{i}.mlp.up_proj.weight": torch.randn(128, 64) for i in range(7)}
    sd["layers.0.attn.q_proj.weight"] = torch.randn(64, 64)
    ck = open_checkpoint(sd)
    per = chunk_bytes(ck.refs[0])
    chunks = plan_chunks(ck, budget=3 * per)
    assert sorted(len(c) for _, c in chunks) == [1, 1, 3, 3]
    for _, c in chunks:
        assert len({r.shape for r in c}) == 1 and sum(chunk_bytes(r) for r in c) <= 3 * per
    small = analyze(sd, memory_budget=per, metrics=("alpha", "entropy"), progress=False)
    big = analyze(sd, metrics=("alpha", "entropy"), progress=False)
    for a, b in zip(small.rows, big.rows):
        assert a["status"] == "ok" and a["alpha"] == pytest.approx(b["alpha"], rel=1e-12)
        assert a["entropy"] == pytest.approx(b["entropy"], rel=1e-12)


# ----- bad input ----------------------------------------------------------------------------------------------
def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        open_checkpoint(tmp_path / "nope.safetensors")


def test_corrupt_safetensors(tmp_path, seed):
    path = tmp_path / "model.safetensors"
    safetensors.save_file(state(seed), str(path))
    path.write_bytes(path.read_bytes()[:40])  # truncated
    with pytest.raises(CheckpointError, match="not a readable safetensors file.*corrupt"):
        open_checkpoint(path)


def test_corrupt_torch_file(tmp_path):
    path = tmp_path / "model.pt"
    path.write_bytes(b"not a zip archive at all" * 10)
    with pytest.raises(CheckpointError, match="not a readable torch checkpoint"):
        open_checkpoint(path)


def test_pickled_objects_need_trust(tmp_path):
    path = tmp_path / "model.pt"
    torch.save(nn.Linear(60, 60), path)
    with pytest.raises(CheckpointError, match="trust_pickle"):
        open_checkpoint(path)
    assert [r.name for r in open_checkpoint(path, trust_pickle=True).refs] == ["weight"]


def test_unknown_format(tmp_path):
    path = tmp_path / "model.onnx"
    path.write_bytes(b"x")
    with pytest.raises(CheckpointError, match="unknown checkpoint format '.onnx'"):
        open_checkpoint(path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="holds no checkpoint"):
        open_checkpoint(tmp_path / "empty")
    with pytest.raises(CheckpointError, match="cannot analyse a list"):
        open_checkpoint([torch.zeros(3, 3)])


def test_no_matrices(tmp_path):
    path = tmp_path / "vectors.safetensors"
    safetensors.save_file({"norm.weight": torch.ones(8), "ids": torch.arange(6).reshape(2, 3)}, str(path))
    with pytest.raises(CheckpointError, match="no floating tensor with >= 2 dimensions"):
        open_checkpoint(path)


def test_filter_matching_nothing(seed):
    ck = open_checkpoint(state(seed))
    assert [r.name for r in ck.select(r"q_proj").refs] == [MATRICES[1], MATRICES[3]]
    with pytest.raises(CheckpointError, match="matches none of the 5 weight matrices"):
        ck.select("lm_head")
    with pytest.raises(CheckpointError, match="not a valid regular expression"):
        ck.select("(")


def test_index_with_missing_shard(tmp_path, seed):
    safetensors.save_file({"a.weight": torch.randn(4, 4)}, str(tmp_path / "s1.safetensors"))
    (tmp_path / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {"a.weight": "s1.safetensors", "b.weight": "s2.safetensors"}}))
    with pytest.raises(CheckpointError, match="missing.*s2.safetensors"):
        open_checkpoint(tmp_path)


def test_matrices_are_released_chunk_by_chunk(seed, monkeypatch):
    """With a budget of one matrix, no matrix read earlier is still alive when ``analyze`` reads the next one:
    memory is bounded by the budget, not by the checkpoint."""
    import gc
    import weakref

    import llr_kernels.analysis.run as run

    torch.manual_seed(seed)
    sd = {f"layers.{i}.mlp.up_proj.weight": torch.randn(128, 64) for i in range(6)}
    ck = open_checkpoint(sd)
    alive_at_load, refs = [], []
    for r in ck.refs:
        def load(src=r.load):
            gc.collect()
            alive_at_load.append(sum(w() is not None for w in refs))
            t = src().clone()  # a fresh tensor per read, as from a file
            refs.append(weakref.ref(t))
            return t

        r.load = load
    monkeypatch.setattr(run, "open_checkpoint", lambda source, trust_pickle=False: ck)
    res = analyze(sd, memory_budget=chunk_bytes(ck.refs[0]), metrics=("alpha", "entropy"), progress=False)
    assert alive_at_load == [0] * 6 and [r["status"] for r in res.rows] == ["ok"] * 6
    gc.collect()
    assert all(w() is None for w in refs)


def test_float8_weights_are_measured_exactly(tmp_path, seed):
    if not hasattr(torch, "float8_e4m3fn"):
        pytest.fail("this torch has no float8_e4m3fn")
    torch.manual_seed(seed)
    w8 = (torch.randn(96, 64) * 4).to(torch.float8_e4m3fn)
    path = tmp_path / "fp8.safetensors"
    safetensors.save_file({"layers.0.mlp.up_proj.weight": w8}, str(path))
    row = analyze(path, metrics=("alpha", "spectral_norm"), progress=False).rows[0]
    assert row["alpha"] == pytest.approx(alpha_np(w8.double()), rel=1e-5)
    ev = torch.linalg.svdvals(w8.double()) ** 2
    assert row["spectral_norm"] == pytest.approx(float(ev.max()), rel=1e-5)


def test_expert_stacks_get_a_row_per_expert():
    """A 3-D expert stack (Mixtral's ``experts.gate_up_proj``) is measured expert by expert, ``name[e]`` rows with
    each slice's float64 Eq. 2 alpha; a 3-D tensor no name rule claims stays one (out, in x k) matrix (a conv
    kernel cannot be told from a stack by name); keep_spectra takes a slice's name."""
    g = torch.Generator().manual_seed(11)
    stack = torch.randn(3, 96, 64, generator=g) * torch.linspace(0.2, 2.0, 64) ** 2
    kernel = torch.randn(70, 64, 3, generator=g)
    res = analyze({"model.layers.0.mlp.experts.gate_up_proj": stack, "encoder.conv.weight": kernel},
                  progress=False, keep_spectra=["model.layers.0.mlp.experts.gate_up_proj[1]"])
    rows = {r["name"]: r for r in res.rows}
    assert list(rows) == [f"model.layers.0.mlp.experts.gate_up_proj[{e}]" for e in range(3)] + ["encoder.conv.weight"]
    for e in range(3):
        r = rows[f"model.layers.0.mlp.experts.gate_up_proj[{e}]"]
        assert r["kind"] == "ffn_gate_up" and r["shape"] == (96, 64)
        assert r["alpha"] == pytest.approx(alpha_np(stack[e]), rel=1e-5)
    assert "eigenvalues" in rows["model.layers.0.mlp.experts.gate_up_proj[1]"]
    assert "eigenvalues" not in rows["model.layers.0.mlp.experts.gate_up_proj[0]"]
    assert rows["encoder.conv.weight"]["shape"] == (70, 64, 3)
    assert rows["encoder.conv.weight"]["alpha"] == pytest.approx(alpha_np(kernel), rel=1e-5)
