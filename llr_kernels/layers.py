"""Which parameters are LLR layers: one classification for models, named parameters, and param groups.

Every trainable parameter gets a kind. Matrix kinds (attention, FFN, other Linear/Conv) take part in the
Hill-alpha map; ``embedding`` (and optionally ``lm_head``) are pinned at the top of the range; ``vector``
(norms, biases) stays at multiplier 1; ``frozen`` parameters are not stepped. A weight shared by several
modules (an embedding tied to the LM head) is one layer, named after its first name, kind ``embedding``.

With a model, the role of a module decides first: an ``nn.Embedding`` (subclasses included) is an embedding;
the output head is the module Hugging Face's ``get_output_embeddings()`` names (the projection that feeds the
loss), or, for other models, the last Linear from the model dimension to the vocabulary (the rows of the input
embedding). Names decide the rest: the patterns cover Hugging Face LLaMA, Mistral / Mixtral (experts stored as
3-D stacks included), Qwen2, Gemma, Phi / Phi-3, GPT-2, GPT-J, GPT-NeoX, Falcon, BLOOM, OPT, BERT and T5, Meta
LLaMA, nanoGPT (``head`` / ``lm_head``) and plain ``nn.Linear`` stacks; ``tests/optim/test_layer_classification.py``
holds the table. A ``classify`` callable overrides any decision. Weights stored transposed, as (in_features,
out_features) (Hugging Face ``Conv1D`` in GPT-2), are recognised from their module's type and report their
logical (out, in) shape, which Muon's shape factor uses; from names alone they cannot be told apart from
``nn.Linear`` (nanoGPT uses the same names), so pass the model.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Callable, Iterable, Optional

import torch
from torch import nn

ATTENTION_KINDS = ("attn_q", "attn_k", "attn_v", "attn_qkv", "attn_o")
FFN_KINDS = ("ffn_gate", "ffn_up", "ffn_gate_up", "ffn_down")
MATRIX_KINDS = ATTENTION_KINDS + FFN_KINDS + ("linear", "conv")
KINDS = MATRIX_KINDS + ("embedding", "lm_head", "vector", "frozen")

# A user override: (name, param, module or None) -> a kind from KINDS, or None to keep the default.
Classifier = Callable[[str, torch.Tensor, Optional[nn.Module]], Optional[str]]

# Ordered (pattern, kind) rules on the lower-cased full parameter name. First match wins. "(\.weight)?$": a
# parameter may be held by its module directly (Mixtral's expert stacks: ``experts.gate_up_proj``).
_W = r"(\.weight)?$"
_ATT = r"(attn|attention|selfattention|encdecattention)"  # the block that holds q/k/v/o (T5: SelfAttention)
_FFN = r"(mlp|ffn|feed_forward|densereludense|experts|moe)"  # the block that holds the FFN
_NAME_RULES: tuple[tuple[str, str], ...] = (
    (r"(^|\.)(lm_head|embed_out|output|head)\.weight$", "lm_head"),
    (r"(embed|wte|wpe|tok_embeddings|word_embeddings|position_embeddings)", "embedding"),
    (r"(qkv|c_attn|query_key_value|in_proj_weight)", "attn_qkv"),
    (rf"(q_proj|\.wq|\.query|{_ATT}\.q){_W}", "attn_q"),
    (rf"(k_proj|\.wk|\.key|{_ATT}\.k){_W}", "attn_k"),
    (rf"(v_proj|\.wv|\.value|{_ATT}\.v){_W}", "attn_v"),
    (rf"{_FFN}\.wo{_W}", "ffn_down"),  # T5's DenseReluDense.wo, before Meta LLaMA's attention.wo
    (rf"(o_proj|\.wo|out_proj|{_ATT}\.o){_W}", "attn_o"),
    (rf"{_ATT}.*(c_proj|dense|proj){_W}", "attn_o"),  # GPT-2 c_proj, NeoX / Falcon / Phi / BERT dense
    (rf"gate_up_proj{_W}", "ffn_gate_up"),
    (rf"(gate_proj|\.w1|\.wi_0){_W}", "ffn_gate"),
    (rf"(up_proj|\.w3|\.wi|\.wi_1|c_fc|fc1|fc_in|dense_h_to_4h|intermediate\.dense){_W}", "ffn_up"),
    (rf"(down_proj|\.w2|fc2|fc_out|dense_4h_to_h|layer\.\d+\.output\.dense){_W}", "ffn_down"),  # BERT: layer.N.output
    (rf"{_FFN}.*(c_proj|proj){_W}", "ffn_down"),
)
_COMPILED = tuple((re.compile(p), k) for p, k in _NAME_RULES)


@dataclass
class Layer:
    """One LLR layer: a trainable parameter (all names it is known by, tied weights included)."""

    name: str
    kind: str
    param: torch.Tensor
    aliases: list[str] = field(default_factory=list)
    transposed: bool = False  # stored as (in, out), e.g. Hugging Face Conv1D

    @property
    def is_matrix(self) -> bool:
        return self.kind in MATRIX_KINDS or self.kind in ("embedding", "lm_head")

    @property
    def stacked(self) -> bool:
        """A stack of matrices (``is_stack``): the layer's alpha is the mean of its slices' (``optim.spectral_update``)."""
        return is_stack(self.kind, self.shape)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.param.shape)

    @property
    def logical_shape(self) -> tuple[int, ...]:
        """(out_features, in_features, ...): the stored shape, with the two axes swapped for transposed weights."""
        shape = self.shape
        return (shape[1], shape[0], *shape[2:]) if self.transposed and len(shape) >= 2 else shape


def is_stack(kind: str, shape: tuple[int, ...]) -> bool:
    """A 3-D matrix kind, (experts, out, in) as MoE layers store their experts, is a stack of matrices, each slice
    measured on its own; a convolution kernel is one (out, in x k) matrix."""
    return len(shape) == 3 and kind in MATRIX_KINDS and kind != "conv"


def stores_transposed(module: nn.Module | None) -> bool:
    """True for modules that keep their weight as (in_features, out_features): Hugging Face ``Conv1D``."""
    return module is not None and type(module).__name__ == "Conv1D" and not isinstance(module, nn.Conv1d)


def kind_from_name(name: str, param: torch.Tensor, module: nn.Module | None = None, *, head: bool = False) -> str:
    """Default classification of one parameter: frozen, vector (1-D), the owning module's role (an Embedding;
    ``head=True``: the model's output head), then the name rules, then the module type."""
    if not param.requires_grad:
        return "frozen"
    if param.dim() < 2:
        return "vector"
    if isinstance(module, (nn.Embedding, nn.EmbeddingBag)):
        return "embedding"
    if head:
        return "lm_head"
    low = name.lower()
    for pattern, kind in _COMPILED:
        if pattern.search(low):
            return kind
    if isinstance(module, nn.modules.conv._ConvNd) or param.dim() > 3 or (param.dim() == 3 and module is None):
        return "conv"
    return "linear"  # a 3-D parameter of a module that is no convolution: a stack of matrices (MoE experts)


def output_head_params(model: nn.Module) -> set[int]:
    """ids of the weights of the model's output head (the projection to the vocabulary that feeds the loss).

    A Hugging Face model names it: ``get_output_embeddings()``. Otherwise: the last ``nn.Linear`` (or ``Conv1D``)
    whose logical shape is (vocabulary, model dimension), read off the input embedding (``get_input_embeddings()``
    or the ``nn.Embedding`` with the most rows). Empty when there is none (an encoder without a head)."""
    getter = getattr(model, "get_output_embeddings", None)
    if callable(getter):
        try:
            out = getter()
        except (AttributeError, NotImplementedError, TypeError):
            out = None
        weight = getattr(out, "weight", None)
        if isinstance(weight, torch.Tensor):
            return {id(weight)}
    emb = None
    getter = getattr(model, "get_input_embeddings", None)
    if callable(getter):
        try:
            emb = getter()
        except (AttributeError, NotImplementedError, TypeError):
            emb = None
    if not isinstance(emb, nn.Embedding):
        embs = [m for m in model.modules() if isinstance(m, nn.Embedding)]
        emb = max(embs, key=lambda m: m.num_embeddings, default=None)
    if emb is None:
        return set()
    want = (emb.num_embeddings, emb.embedding_dim)
    last = None
    for mod in model.modules():
        w = getattr(mod, "weight", None)
        if not isinstance(w, torch.Tensor) or w.dim() != 2 or w is emb.weight:
            continue
        if isinstance(mod, nn.Linear) or stores_transposed(mod):
            shape = (w.shape[1], w.shape[0]) if stores_transposed(mod) else tuple(w.shape)
            if shape == want:
                last = w
    return set() if last is None else {id(last)}


def _owners(model: nn.Module) -> dict[int, tuple[torch.Tensor, list[str], list[nn.Module]]]:
    """id(param) -> (param, all its qualified names, owning modules), tied parameters included."""
    owners: dict[int, tuple[torch.Tensor, list[str], list[nn.Module]]] = {}
    for mod_name, mod in model.named_modules(remove_duplicate=False):
        for pname, p in mod.named_parameters(recurse=False):
            _, names, mods = owners.setdefault(id(p), (p, [], []))
            full = f"{mod_name}.{pname}" if mod_name else pname
            if full not in names:
                names.append(full)
                mods.append(mod)
    return owners


def classify_parameters(
    source: nn.Module | Iterable[tuple[str, torch.Tensor]],
    *,
    classify: Classifier | None = None,
) -> list[Layer]:
    """Classify every parameter of a model, or of an iterable of (name, param) pairs, into LLR layers.

    Returns one Layer per distinct parameter, in first-seen order. Tied parameters appear once; if any of
    their owners is an embedding the layer is an embedding. ``classify`` may return a kind to override.
    """
    layers: list[Layer] = []
    if isinstance(source, nn.Module):
        heads = output_head_params(source)
        for param, names, mods in _owners(source).values():
            kinds = [kind_from_name(n, param, m, head=id(param) in heads) for n, m in zip(names, mods)]
            kind = _tied_kind(kinds)
            layer = Layer(names[0], kind, param, names, transposed=stores_transposed(mods[0]) and param.dim() == 2)
            layers.append(_override(layer, classify, mods[0]))
        return layers
    seen: dict[int, Layer] = {}
    for item in source:
        if not (isinstance(item, tuple) and len(item) == 2 and isinstance(item[1], torch.Tensor)):
            raise TypeError("classify_parameters expects an nn.Module or an iterable of (name, tensor) pairs")
        name, param = item
        if id(param) in seen:
            layer = seen[id(param)]
            layer.aliases.append(name)
            if classify is None:
                layer.kind = _tied_kind([layer.kind, kind_from_name(name, param)])
            continue
        layer = _override(Layer(name, kind_from_name(name, param), param, [name]), classify, None)
        seen[id(param)] = layer
        layers.append(layer)
    return layers


def _tied_kind(kinds: list[str]) -> str:
    """A weight shared by an embedding and an output head is one embedding layer."""
    return "embedding" if "embedding" in kinds or (len(kinds) > 1 and "lm_head" in kinds) else kinds[0]


def _override(layer: Layer, classify: Classifier | None, module: nn.Module | None) -> Layer:
    if classify is None:
        return layer
    kind = classify(layer.name, layer.param, module)
    if kind is None:
        return layer
    if kind not in KINDS:
        raise ValueError(f"classify returned {kind!r} for {layer.name!r}; it must return None or one of {KINDS}")
    if kind in MATRIX_KINDS + ("embedding", "lm_head") and layer.param.dim() < 2:
        raise ValueError(f"classify made {layer.name!r} a {kind!r} layer, but it is a {layer.param.dim()}-D tensor")
    layer.kind = kind
    return layer
