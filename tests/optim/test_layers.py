"""Layer classification on Hugging Face-style LLaMA / GPT-2 / Qwen / NeoX naming and plain stacks."""
import pytest
import torch
from torch import nn

from llr_kernels import classify_parameters


def tree(spec: dict) -> nn.Module:
    """Build a module tree from {"a.b.c": module} so parameter names match real checkpoints."""
    root = nn.Module()
    for path, mod in spec.items():
        parent = root
        parts = path.split(".")
        for p in parts[:-1]:
            if not hasattr(parent, p):
                parent.add_module(p, nn.Module())
            parent = getattr(parent, p)
        parent.add_module(parts[-1], mod)
    return root


def kinds(model, **kw):
    return {l.name: l.kind for l in classify_parameters(model, **kw)}


def test_hf_llama_naming_with_tied_head():
    d, f, v = 16, 40, 50
    m = tree({
        "model.embed_tokens": nn.Embedding(v, d),
        "model.layers.0.self_attn.q_proj": nn.Linear(d, d, bias=False),
        "model.layers.0.self_attn.k_proj": nn.Linear(d, d, bias=False),
        "model.layers.0.self_attn.v_proj": nn.Linear(d, d, bias=False),
        "model.layers.0.self_attn.o_proj": nn.Linear(d, d, bias=False),
        "model.layers.0.mlp.gate_proj": nn.Linear(d, f, bias=False),
        "model.layers.0.mlp.up_proj": nn.Linear(d, f, bias=False),
        "model.layers.0.mlp.down_proj": nn.Linear(f, d, bias=False),
        "model.layers.0.input_layernorm": nn.LayerNorm(d, bias=False),
        "model.norm": nn.LayerNorm(d, bias=False),
        "lm_head": nn.Linear(d, v, bias=False),
    })
    m.lm_head.weight = m.model.embed_tokens.weight
    layers = classify_parameters(m)
    k = {l.name: l.kind for l in layers}
    assert k == {
        "model.embed_tokens.weight": "embedding",
        "model.layers.0.self_attn.q_proj.weight": "attn_q",
        "model.layers.0.self_attn.k_proj.weight": "attn_k",
        "model.layers.0.self_attn.v_proj.weight": "attn_v",
        "model.layers.0.self_attn.o_proj.weight": "attn_o",
        "model.layers.0.mlp.gate_proj.weight": "ffn_gate",
        "model.layers.0.mlp.up_proj.weight": "ffn_up",
        "model.layers.0.mlp.down_proj.weight": "ffn_down",
        "model.layers.0.input_layernorm.weight": "vector",
        "model.norm.weight": "vector",
    }
    tied = next(l for l in layers if l.kind == "embedding")
    assert tied.aliases == ["model.embed_tokens.weight", "lm_head.weight"]


def test_untied_head_is_lm_head():
    m = tree({"model.embed_tokens": nn.Embedding(50, 16), "lm_head": nn.Linear(16, 50, bias=False)})
    assert kinds(m) == {"model.embed_tokens.weight": "embedding", "lm_head.weight": "lm_head"}


def test_gpt2_naming_with_conv1d_style_weights():
    d = 16
    m = tree({
        "transformer.wte": nn.Embedding(50, d),
        "transformer.wpe": nn.Embedding(32, d),
        "transformer.h.0.ln_1": nn.LayerNorm(d),
        "transformer.h.0.attn.c_attn": nn.Linear(d, 3 * d),
        "transformer.h.0.attn.c_proj": nn.Linear(d, d),
        "transformer.h.0.mlp.c_fc": nn.Linear(d, 4 * d),
        "transformer.h.0.mlp.c_proj": nn.Linear(4 * d, d),
    })
    k = kinds(m)
    assert k["transformer.wte.weight"] == "embedding" and k["transformer.wpe.weight"] == "embedding"
    assert k["transformer.h.0.attn.c_attn.weight"] == "attn_qkv"
    assert k["transformer.h.0.attn.c_proj.weight"] == "attn_o"
    assert k["transformer.h.0.mlp.c_fc.weight"] == "ffn_up"
    assert k["transformer.h.0.mlp.c_proj.weight"] == "ffn_down"
    assert k["transformer.h.0.attn.c_attn.bias"] == "vector" and k["transformer.h.0.ln_1.weight"] == "vector"


def test_qwen_neox_meta_and_fused_names_from_named_parameters():
    names = {
        "model.layers.0.self_attn.qkv_proj.weight": "attn_qkv",
        "gpt_neox.layers.0.attention.query_key_value.weight": "attn_qkv",
        "gpt_neox.layers.0.attention.dense.weight": "attn_o",
        "gpt_neox.layers.0.mlp.dense_h_to_4h.weight": "ffn_up",
        "gpt_neox.layers.0.mlp.dense_4h_to_h.weight": "ffn_down",
        "embed_out.weight": "lm_head",
        "layers.0.attention.wq.weight": "attn_q",
        "layers.0.attention.wo.weight": "attn_o",
        "layers.0.feed_forward.w1.weight": "ffn_gate",
        "layers.0.feed_forward.w2.weight": "ffn_down",
        "layers.0.feed_forward.w3.weight": "ffn_up",
        "tok_embeddings.weight": "embedding",
        "output.weight": "lm_head",
        "model.layers.0.mlp.gate_up_proj.weight": "ffn_gate_up",
    }
    named = [(n, nn.Parameter(torch.randn(8, 8))) for n in names]
    assert kinds(named) == names


def test_plain_stack_frozen_conv_and_override():
    m = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4), nn.Conv2d(3, 5, 3))
    m[2].weight.requires_grad_(False)
    k = kinds(m)
    assert k == {"0.weight": "linear", "0.bias": "vector", "2.weight": "frozen", "2.bias": "vector", "3.weight": "conv", "3.bias": "vector"}
    over = kinds(m, classify=lambda name, p, mod: "ffn_up" if name == "0.weight" else None)
    assert over["0.weight"] == "ffn_up" and over["3.weight"] == "conv"
    with pytest.raises(ValueError, match="classify returned"):
        classify_parameters(m, classify=lambda *a: "banana")
    with pytest.raises(ValueError, match="1-D tensor"):
        classify_parameters(m, classify=lambda name, p, mod: "linear")


def test_tied_named_parameters_are_one_layer():
    w = nn.Parameter(torch.randn(50, 8))
    layers = classify_parameters([("tok.weight", w), ("lm_head.weight", w)])
    assert len(layers) == 1 and layers[0].kind == "embedding" and layers[0].aliases == ["tok.weight", "lm_head.weight"]
