"""Small decoder-only language models in plain PyTorch: LLaMA-style and GPT-nano (GPT-2 style).

LLaMA: RMSNorm (pre-norm), rotary position embeddings, SwiGLU MLP, no biases, untied head by default
(as the LLaMA models of the paper, Table 8). GPT-nano: learned positions, LayerNorm with bias, fused
qkv, GELU MLP (4x), head tied to the embedding. Module names follow the common conventions
(``embed_tokens``/``wte``, ``lm_head``) so layerwise optimizers can recognise the embedding and head.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of one model; ``vocab_size`` and ``max_seq_len`` are filled from the data and run."""

    arch: str = "llama"  # "llama" | "gpt"
    d_model: int = 128
    n_layers: int = 4
    n_heads: int = 4
    d_ff: int = 344  # SwiGLU hidden width (llama) or MLP width (gpt)
    vocab_size: int = 8192
    max_seq_len: int = 256
    tie_embeddings: bool = False
    rope_theta: float = 10000.0
    norm_eps: float = 1e-6
    init_std: float = 0.02

    def to_dict(self) -> dict:
        return asdict(self)


# Size presets. "60m", "135m" and "gpt-nano" are the paper's Table 8 shapes; the parameter count printed
# at run time depends on the vocabulary (Table 8's names do not state which counting they use).
MODEL_PRESETS: dict[str, ModelConfig] = {
    "tiny": ModelConfig("llama", 64, 2, 4, 176),  # tests: d_model 64 keeps n >= 50 eigenvalues for Hill
    "cpu": ModelConfig("llama", 128, 4, 4, 344),  # the CPU demo, ~1 min per arm on 2 cores
    "gpt-cpu": ModelConfig("gpt", 128, 4, 4, 512, tie_embeddings=True),
    "20m": ModelConfig("llama", 384, 6, 6, 1024),
    "60m": ModelConfig("llama", 768, 6, 6, 2048),  # Table 8: LLaMa-60M
    "135m": ModelConfig("llama", 768, 12, 12, 2048),  # Table 8: LLaMa-135M
    "gpt-nano": ModelConfig("gpt", 768, 12, 12, 3072, tie_embeddings=True),  # Table 8: GPT-nano
}


def model_config(preset: str, **overrides) -> ModelConfig:
    """A preset's config with fields overridden (None values are ignored)."""
    if preset not in MODEL_PRESETS:
        raise ValueError(f"unknown model preset {preset!r}; choose one of {sorted(MODEL_PRESETS)}")
    return replace(MODEL_PRESETS[preset], **{k: v for k, v in overrides.items() if v is not None})


class RMSNorm(nn.Module):
    """x / rms(x) * weight, computed in float32 for stability under autocast."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return (y * self.weight.float()).type_as(x)


def rotary_cos_sin(seq_len: int, head_dim: int, theta: float = 10000.0, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin tables (seq_len, head_dim) for the rotate-half convention: pair (i, i + head_dim/2)."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, device=device, dtype=torch.float32) / head_dim))
    freqs = torch.outer(torch.arange(seq_len, device=device, dtype=torch.float32), inv_freq)
    emb = torch.cat([freqs, freqs], dim=-1)
    return emb.cos(), emb.sin()


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate (..., T, head_dim) by position: component i pairs with i + head_dim/2."""
    half = x.shape[-1] // 2
    rot = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return (x * cos + rot * sin).type_as(x)


class LlamaAttention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        d, self.h = cfg.d_model, cfg.n_heads
        self.q_proj = nn.Linear(d, d, bias=False)
        self.k_proj = nn.Linear(d, d, bias=False)
        self.v_proj = nn.Linear(d, d, bias=False)
        self.o_proj = nn.Linear(d, d, bias=False)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = (p(x).view(b, t, self.h, d // self.h).transpose(1, 2) for p in (self.q_proj, self.k_proj, self.v_proj))
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.o_proj(y.transpose(1, 2).reshape(b, t, d))


class SwiGLU(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.gate_proj = nn.Linear(cfg.d_model, cfg.d_ff, bias=False)
        self.up_proj = nn.Linear(cfg.d_model, cfg.d_ff, bias=False)
        self.down_proj = nn.Linear(cfg.d_ff, cfg.d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class LlamaBlock(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.input_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.attn = LlamaAttention(cfg)
        self.post_attn_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.mlp = SwiGLU(cfg)

    def forward(self, x, cos, sin):
        x = x + self.attn(self.input_norm(x), cos, sin)
        return x + self.mlp(self.post_attn_norm(x))


class GPTAttention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.h = cfg.n_heads
        self.c_attn = nn.Linear(cfg.d_model, 3 * cfg.d_model)
        self.c_proj = nn.Linear(cfg.d_model, cfg.d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = (z.view(b, t, self.h, d // self.h).transpose(1, 2) for z in self.c_attn(x).split(d, dim=2))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.c_proj(y.transpose(1, 2).reshape(b, t, d))


class GPTBlock(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.d_model)
        self.attn = GPTAttention(cfg)
        self.ln_2 = nn.LayerNorm(cfg.d_model)
        self.mlp = nn.Sequential()
        self.mlp.c_fc = nn.Linear(cfg.d_model, cfg.d_ff)
        self.mlp.gelu = nn.GELU(approximate="tanh")
        self.mlp.c_proj = nn.Linear(cfg.d_ff, cfg.d_model)

    def forward(self, x, cos=None, sin=None):
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class LanguageModel(nn.Module):
    """Decoder-only LM; ``forward(idx, targets=None)`` returns logits, or (logits, mean CE loss)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        if cfg.d_model % cfg.n_heads or (cfg.d_model // cfg.n_heads) % 2:
            raise ValueError(f"d_model {cfg.d_model} must split into {cfg.n_heads} heads of even size")
        self.cfg = cfg
        if cfg.arch == "llama":
            self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.d_model)
            self.layers = nn.ModuleList(LlamaBlock(cfg) for _ in range(cfg.n_layers))
            self.norm = RMSNorm(cfg.d_model, cfg.norm_eps)
            cos, sin = rotary_cos_sin(cfg.max_seq_len, cfg.d_model // cfg.n_heads, cfg.rope_theta)
            self.register_buffer("rope_cos", cos, persistent=False)
            self.register_buffer("rope_sin", sin, persistent=False)
        elif cfg.arch == "gpt":
            self.wte = nn.Embedding(cfg.vocab_size, cfg.d_model)
            self.wpe = nn.Embedding(cfg.max_seq_len, cfg.d_model)
            self.layers = nn.ModuleList(GPTBlock(cfg) for _ in range(cfg.n_layers))
            self.norm = nn.LayerNorm(cfg.d_model)
        else:
            raise ValueError(f"arch must be 'llama' or 'gpt', got {cfg.arch!r}")
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        self.apply(self._init)
        for name, p in self.named_parameters():  # GPT-2: scale residual projections by depth
            if name.endswith(("o_proj.weight", "down_proj.weight", "c_proj.weight")):
                nn.init.normal_(p, 0.0, cfg.init_std / math.sqrt(2 * cfg.n_layers))
        if cfg.tie_embeddings:
            self.lm_head.weight = self.token_embedding.weight

    @property
    def token_embedding(self) -> nn.Embedding:
        return self.embed_tokens if self.cfg.arch == "llama" else self.wte

    def _init(self, m: nn.Module) -> None:
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, 0.0, self.cfg.init_std)
        if isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)

    def num_params(self, non_embedding: bool = False) -> int:
        """Unique parameter count (a tied head counts once); optionally without embeddings/head."""
        seen = {id(p): p for p in self.parameters()}
        n = sum(p.numel() for p in seen.values())
        if non_embedding:
            n -= self.token_embedding.weight.numel()
            if not self.cfg.tie_embeddings:
                n -= self.lm_head.weight.numel()
            if self.cfg.arch == "gpt":
                n -= self.wpe.weight.numel()
        return n

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None):
        t = idx.shape[1]
        if t > self.cfg.max_seq_len:
            raise ValueError(f"sequence length {t} exceeds max_seq_len {self.cfg.max_seq_len}")
        if self.cfg.arch == "llama":
            x = self.embed_tokens(idx)
            cos, sin = self.rope_cos[:t].to(x.dtype), self.rope_sin[:t].to(x.dtype)
        else:
            x = self.wte(idx) + self.wpe(torch.arange(t, device=idx.device))
            cos = sin = None
        for layer in self.layers:
            x = layer(x, cos, sin)
        logits = self.lm_head(self.norm(x))
        if targets is None:
            return logits
        loss = F.cross_entropy(logits.float().view(-1, logits.shape[-1]), targets.reshape(-1))
        return logits, loss


def build_model(cfg: ModelConfig) -> LanguageModel:
    """Construct a model (initialised under the caller's torch seed)."""
    return LanguageModel(cfg)
