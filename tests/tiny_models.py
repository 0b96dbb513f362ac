"""A small LLaMA-style transformer with Hugging Face parameter names, for optimizer tests."""
import torch
from torch import nn


class Block(nn.Module):
    def __init__(self, d: int, heads: int, ffn: int) -> None:
        super().__init__()
        self.heads = heads
        self.input_layernorm = nn.RMSNorm(d)
        self.self_attn = nn.Module()
        for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
            self.self_attn.add_module(name, nn.Linear(d, d, bias=False))
        self.post_attention_layernorm = nn.RMSNorm(d)
        self.mlp = nn.Module()
        self.mlp.gate_proj = nn.Linear(d, ffn, bias=False)
        self.mlp.up_proj = nn.Linear(d, ffn, bias=False)
        self.mlp.down_proj = nn.Linear(ffn, d, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        h = self.input_layernorm(x)
        a = self.self_attn
        q, k, v = (m(h).view(b, t, self.heads, -1).transpose(1, 2) for m in (a.q_proj, a.k_proj, a.v_proj))
        att = nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + a.o_proj(att.transpose(1, 2).reshape(b, t, d))
        h = self.post_attention_layernorm(x)
        return x + self.mlp.down_proj(nn.functional.silu(self.mlp.gate_proj(h)) * self.mlp.up_proj(h))


class TinyLlama(nn.Module):
    def __init__(self, vocab: int = 96, d: int = 64, heads: int = 4, ffn: int = 128, layers: int = 2, tied: bool = False) -> None:
        super().__init__()
        self.model = nn.Module()
        self.model.embed_tokens = nn.Embedding(vocab, d)
        self.model.layers = nn.ModuleList(Block(d, heads, ffn) for _ in range(layers))
        self.model.norm = nn.RMSNorm(d)
        self.lm_head = nn.Linear(d, vocab, bias=False)
        if tied:
            self.lm_head.weight = self.model.embed_tokens.weight

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        x = self.model.embed_tokens(idx)
        for blk in self.model.layers:
            x = blk(x)
        return self.lm_head(self.model.norm(x))


def lm_loss(model: nn.Module, idx: torch.Tensor) -> torch.Tensor:
    logits = model(idx[:, :-1])
    return nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), idx[:, 1:].reshape(-1))


def batches(n: int, vocab: int = 96, bsz: int = 4, seq: int = 17, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, vocab, (bsz, seq), generator=g) for _ in range(n)]
