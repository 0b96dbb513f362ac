"""Layer kinds of the common architectures, from tiny ``transformers`` models built from configs (no downloads),
and the module-role rules that come before names: an Embedding, the output head (Hugging Face's
``get_output_embeddings()``, else the last Linear onto the vocabulary), tied weights.

The expected kinds are written out by hand from each architecture's published layout (which projection is the
query, which FFN matrix is the gate, ...), one row per weight matrix of the first block.
"""
from __future__ import annotations

import importlib.util
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before transformers is imported: never reach the network

import pytest
import torch
from conftest import needs
from torch import nn

from llr_kernels import LLRAdamW, classify_parameters

HF_MISSING = None if importlib.util.find_spec("transformers") else "transformers not installed (pip install -e '.[test]')"

SMALL = dict(vocab_size=96, hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=64)

# family: (config class, model class, config overrides, {matrix name: kind}); names of the first block only
LLAMA_LIKE = {
    "model.embed_tokens.weight": "embedding",
    "model.layers.0.self_attn.q_proj.weight": "attn_q",
    "model.layers.0.self_attn.k_proj.weight": "attn_k",
    "model.layers.0.self_attn.v_proj.weight": "attn_v",
    "model.layers.0.self_attn.o_proj.weight": "attn_o",
    "model.layers.0.mlp.gate_proj.weight": "ffn_gate",
    "model.layers.0.mlp.up_proj.weight": "ffn_up",
    "model.layers.0.mlp.down_proj.weight": "ffn_down",
    "lm_head.weight": "lm_head",
}
T5_BLOCK = {f"{side}.block.0.layer.0.SelfAttention.{p}.weight": k for side in ("encoder", "decoder")
            for p, k in (("q", "attn_q"), ("k", "attn_k"), ("v", "attn_v"), ("o", "attn_o"))}
FAMILIES = {
    "llama": ("LlamaConfig", "LlamaForCausalLM", dict(num_key_value_heads=2, tie_word_embeddings=False), LLAMA_LIKE),
    "mistral": ("MistralConfig", "MistralForCausalLM", dict(num_key_value_heads=2, tie_word_embeddings=False),
                LLAMA_LIKE),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", dict(num_key_value_heads=2, tie_word_embeddings=False), LLAMA_LIKE),
    "gemma": ("GemmaConfig", "GemmaForCausalLM", dict(num_key_value_heads=2, head_dim=8),  # ties its head
              {k: v for k, v in LLAMA_LIKE.items() if k != "lm_head.weight"}),
    "mixtral": ("MixtralConfig", "MixtralForCausalLM",
                dict(num_key_value_heads=2, num_local_experts=4, num_experts_per_tok=2, tie_word_embeddings=False), {
                    **{k: v for k, v in LLAMA_LIKE.items() if ".mlp." not in k},
                    "model.layers.0.mlp.experts.gate_up_proj": "ffn_gate_up",  # (experts, 2 x ffn, d): a stack
                    "model.layers.0.mlp.experts.down_proj": "ffn_down",
                    "model.layers.0.mlp.gate.weight": "linear",  # the router
                }),
    "phi": ("PhiConfig", "PhiForCausalLM", dict(), {
        "model.embed_tokens.weight": "embedding",
        "model.layers.0.self_attn.q_proj.weight": "attn_q",
        "model.layers.0.self_attn.k_proj.weight": "attn_k",
        "model.layers.0.self_attn.v_proj.weight": "attn_v",
        "model.layers.0.self_attn.dense.weight": "attn_o",
        "model.layers.0.mlp.fc1.weight": "ffn_up",
        "model.layers.0.mlp.fc2.weight": "ffn_down",
        "lm_head.weight": "lm_head",
    }),
    "phi3": ("Phi3Config", "Phi3ForCausalLM", dict(pad_token_id=0, tie_word_embeddings=False), {
        "model.embed_tokens.weight": "embedding",
        "model.layers.0.self_attn.qkv_proj.weight": "attn_qkv",
        "model.layers.0.self_attn.o_proj.weight": "attn_o",
        "model.layers.0.mlp.gate_up_proj.weight": "ffn_gate_up",
        "model.layers.0.mlp.down_proj.weight": "ffn_down",
        "lm_head.weight": "lm_head",
    }),
    "gptj": ("GPTJConfig", "GPTJForCausalLM", dict(n_embd=32, n_layer=1, n_head=4, rotary_dim=4), {
        "transformer.wte.weight": "embedding",
        "transformer.h.0.attn.q_proj.weight": "attn_q",
        "transformer.h.0.attn.k_proj.weight": "attn_k",
        "transformer.h.0.attn.v_proj.weight": "attn_v",
        "transformer.h.0.attn.out_proj.weight": "attn_o",
        "transformer.h.0.mlp.fc_in.weight": "ffn_up",
        "transformer.h.0.mlp.fc_out.weight": "ffn_down",
        "lm_head.weight": "lm_head",
    }),
    "gpt_neox": ("GPTNeoXConfig", "GPTNeoXForCausalLM", dict(tie_word_embeddings=False), {
        "gpt_neox.embed_in.weight": "embedding",
        "gpt_neox.layers.0.attention.query_key_value.weight": "attn_qkv",
        "gpt_neox.layers.0.attention.dense.weight": "attn_o",
        "gpt_neox.layers.0.mlp.dense_h_to_4h.weight": "ffn_up",
        "gpt_neox.layers.0.mlp.dense_4h_to_h.weight": "ffn_down",
        "lm_head.weight": "lm_head",  # embed_out before transformers 5 (a name rule keeps that one too)
    }),
    "falcon": ("FalconConfig", "FalconForCausalLM", dict(), {  # ties its head
        "transformer.word_embeddings.weight": "embedding",
        "transformer.h.0.self_attention.query_key_value.weight": "attn_qkv",
        "transformer.h.0.self_attention.dense.weight": "attn_o",
        "transformer.h.0.mlp.dense_h_to_4h.weight": "ffn_up",
        "transformer.h.0.mlp.dense_4h_to_h.weight": "ffn_down",
    }),
    "opt": ("OPTConfig", "OPTForCausalLM", dict(ffn_dim=64, word_embed_proj_dim=32), {  # ties its head
        "model.decoder.embed_tokens.weight": "embedding",
        "model.decoder.embed_positions.weight": "embedding",
        "model.decoder.layers.0.self_attn.q_proj.weight": "attn_q",
        "model.decoder.layers.0.self_attn.k_proj.weight": "attn_k",
        "model.decoder.layers.0.self_attn.v_proj.weight": "attn_v",
        "model.decoder.layers.0.self_attn.out_proj.weight": "attn_o",
        "model.decoder.layers.0.fc1.weight": "ffn_up",
        "model.decoder.layers.0.fc2.weight": "ffn_down",
    }),
    "gpt2": ("GPT2Config", "GPT2LMHeadModel", dict(n_embd=32, n_layer=1, n_head=4), {  # ties its head
        "transformer.wte.weight": "embedding",
        "transformer.wpe.weight": "embedding",
        "transformer.h.0.attn.c_attn.weight": "attn_qkv",
        "transformer.h.0.attn.c_proj.weight": "attn_o",
        "transformer.h.0.mlp.c_fc.weight": "ffn_up",
        "transformer.h.0.mlp.c_proj.weight": "ffn_down",
    }),
    "bert": ("BertConfig", "BertForMaskedLM", dict(), {  # the MLM decoder is tied to the word embeddings
        "bert.embeddings.word_embeddings.weight": "embedding",
        "bert.embeddings.position_embeddings.weight": "embedding",
        "bert.embeddings.token_type_embeddings.weight": "embedding",
        "bert.encoder.layer.0.attention.self.query.weight": "attn_q",
        "bert.encoder.layer.0.attention.self.key.weight": "attn_k",
        "bert.encoder.layer.0.attention.self.value.weight": "attn_v",
        "bert.encoder.layer.0.attention.output.dense.weight": "attn_o",
        "bert.encoder.layer.0.intermediate.dense.weight": "ffn_up",
        "bert.encoder.layer.0.output.dense.weight": "ffn_down",
        "cls.predictions.transform.dense.weight": "linear",
    }),
    "t5": ("T5Config", "T5ForConditionalGeneration",
           dict(d_model=32, d_ff=64, d_kv=8, num_layers=1, num_heads=4), {  # ties its head (and both embed_tokens)
               "shared.weight": "embedding",
               **T5_BLOCK,
               "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight": "embedding",  # an nn.Embedding
               "decoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight": "embedding",
               "encoder.block.0.layer.1.DenseReluDense.wi.weight": "ffn_up",
               "encoder.block.0.layer.1.DenseReluDense.wo.weight": "ffn_down",
               "decoder.block.0.layer.1.EncDecAttention.q.weight": "attn_q",
               "decoder.block.0.layer.1.EncDecAttention.k.weight": "attn_k",
               "decoder.block.0.layer.1.EncDecAttention.v.weight": "attn_v",
               "decoder.block.0.layer.1.EncDecAttention.o.weight": "attn_o",
               "decoder.block.0.layer.2.DenseReluDense.wi.weight": "ffn_up",
               "decoder.block.0.layer.2.DenseReluDense.wo.weight": "ffn_down",
           }),
    "t5_gated": ("T5Config", "T5ForConditionalGeneration",
                 dict(d_model=32, d_ff=64, d_kv=8, num_layers=1, num_heads=4, feed_forward_proj="gated-gelu"), {}),
}


FAMILIES["t5_gated"][3].update({k: v for k, v in FAMILIES["t5"][3].items() if ".wi." not in k})
FAMILIES["t5_gated"][3].update({f"{side}.block.0.layer.{i}.DenseReluDense.{p}.weight": k
                                for side, i in (("encoder", 1), ("decoder", 2))
                                for p, k in (("wi_0", "ffn_gate"), ("wi_1", "ffn_up"))})


def build(family: str) -> nn.Module:
    import transformers

    cfg_name, model_name, over, _ = FAMILIES[family]
    cfg = getattr(transformers, cfg_name)(**{**SMALL, **over})
    torch.manual_seed(0)
    return getattr(transformers, model_name)(cfg)


@needs(HF_MISSING, "transformers")
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_common_architectures_layer_kinds(family):
    model = build(family)
    got = {layer.name: layer.kind for layer in classify_parameters(model)}
    want = FAMILIES[family][3]
    assert {n: got.get(n, "(absent)") for n in want} == want
    assert {n for n, k in got.items() if k != "vector"} == set(want)  # one block: every matrix is listed
    # the head, tied or not, is never a hidden layer, and the optimizer sees the same kinds
    opt = LLRAdamW(model, lr=1e-3, backend="torch")
    assert {layer.name: layer.kind for layer in opt.layers} == got
    head = model.get_output_embeddings()
    if head is not None:
        i = opt.layer_of(head.weight)
        assert opt.layers[i].kind == ("embedding" if head.weight is model.get_input_embeddings().weight else "lm_head")


@needs(HF_MISSING, "transformers")
def test_hf_head_comes_from_get_output_embeddings():
    """A Hugging Face model names its output head; no name rule is needed (a renamed head is still the head)."""
    model = build("llama")
    head = model.lm_head
    del model.lm_head
    model.to_vocab = head  # a name no rule knows
    model.get_output_embeddings = lambda: model.to_vocab
    kinds = {layer.name: layer.kind for layer in classify_parameters(model)}
    assert kinds["to_vocab.weight"] == "lm_head"


class Net(nn.Module):
    """A nanoGPT-like model whose head has a name of the user's choosing."""

    def __init__(self, head_name: str, vocab: int = 50, d: int = 16, tied: bool = False) -> None:
        super().__init__()
        self.tok = nn.Embedding(vocab, d)
        self.pos = nn.Embedding(8, d)
        self.blocks = nn.ModuleList(nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d)) for _ in range(2))
        self.ln_f = nn.LayerNorm(d)
        setattr(self, head_name, nn.Linear(d, vocab, bias=False))
        if tied:
            getattr(self, head_name).weight = self.tok.weight


@pytest.mark.parametrize("head_name", ["head", "lm_head", "to_logits", "unembed"])
def test_head_found_by_role_whatever_its_name(head_name):
    kinds = {layer.name: layer.kind for layer in classify_parameters(Net(head_name))}
    assert kinds[f"{head_name}.weight"] == "lm_head"
    assert kinds["tok.weight"] == kinds["pos.weight"] == "embedding"
    assert {kinds[f"blocks.{i}.{j}.weight"] for i in (0, 1) for j in (0, 2)} == {"linear"}
    tied = classify_parameters(Net(head_name, tied=True))
    emb = [layer for layer in tied if layer.kind == "embedding" and layer.param.shape[0] == 50]
    assert len(emb) == 1 and emb[0].aliases == ["tok.weight", f"{head_name}.weight"]
    assert "lm_head" not in {layer.kind for layer in tied}


def test_head_by_name_without_a_model():
    """From (name, tensor) pairs only the names are there: ``head`` and ``lm_head`` are heads, as are GPT-NeoX's
    ``embed_out`` and Meta LLaMA's ``output``; a hidden matrix named like a block output is not."""
    w = lambda *s: nn.Parameter(torch.randn(*s))
    named = [("head.weight", w(50, 16)), ("lm_head.weight", w(50, 16)), ("embed_out.weight", w(50, 16)),
             ("output.weight", w(50, 16)), ("layers.0.attention.output.dense.weight", w(16, 16)),
             ("layers.0.head_proj.weight", w(16, 16))]
    kinds = {layer.name: layer.kind for layer in classify_parameters(named)}
    assert kinds == {"head.weight": "lm_head", "lm_head.weight": "lm_head", "embed_out.weight": "lm_head",
                     "output.weight": "lm_head", "layers.0.attention.output.dense.weight": "attn_o",
                     "layers.0.head_proj.weight": "linear"}


def test_role_beats_name():
    """An Embedding is an embedding whatever it is called; a Linear onto the vocabulary that comes last is the
    head even where its name says "proj"; a hidden Linear of the same shape earlier in the model is not."""
    vocab, d = 40, 8

    class M(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.table = nn.Embedding(vocab, d)
            self.mixer = nn.Linear(d, vocab)  # (vocab, d) too, but not the last one
            self.back = nn.Linear(vocab, d)
            self.out_proj = nn.Linear(d, vocab)

    kinds = {layer.name: layer.kind for layer in classify_parameters(M())}
    assert kinds["table.weight"] == "embedding"
    assert kinds["out_proj.weight"] == "lm_head"
    assert kinds["mixer.weight"] == "linear" and kinds["back.weight"] == "linear"
