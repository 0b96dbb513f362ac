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


class SpectralNet(nn.Module):
    """A small LM whose weight matrices have power-law spectra with known, distinct exponents.

    Every matrix with at least ``min_eigs`` eigenvalues therefore has a finite Hill alpha, all alphas differ,
    and their order is known before measuring (it follows ``EXPONENTS``). Square, tall and wide matrices
    (n = 48), two narrow ones (n = 13, below min_eigs = 16: alpha NaN), an embedding, a norm, a bias and an
    untied LM head. Use ``min_eigs=16`` (or <= 13 to measure the narrow ones too).
    """

    VOCAB, D, FF, NARROW = 64, 48, 96, 13  # NARROW is odd: floor(n / 2) and rounding up differ
    # name -> exponent of the squared-singular-value power law (larger exponent: larger alpha)
    EXPONENTS = {
        "embed_tokens.weight": 2.6, "q_proj.weight": 2.2, "up_proj.weight": 3.0, "down_proj.weight": 4.5,
        "narrow_in.weight": 3.6, "narrow_out.weight": 2.4, "lm_head.weight": 5.5,
    }

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        from reference import power_law_matrix

        v, d, f, r = self.VOCAB, self.D, self.FF, self.NARROW
        self.embed_tokens = nn.Embedding(v, d)
        self.q_proj = nn.Linear(d, d, bias=False)
        self.up_proj = nn.Linear(d, f, bias=True)
        self.down_proj = nn.Linear(f, d, bias=False)
        self.narrow_in = nn.Linear(d, r, bias=False)
        self.narrow_out = nn.Linear(r, d, bias=False)
        self.norm = nn.RMSNorm(d)
        self.lm_head = nn.Linear(d, v, bias=False)
        with torch.no_grad():
            for k, (name, p) in enumerate(self.named_parameters()):
                if name in self.EXPONENTS:
                    scale = 1.0 if name == "embed_tokens.weight" else 3.0 / p.shape[1] ** 0.5
                    p.copy_(power_law_matrix(*p.shape, self.EXPONENTS[name], seed=seed * 100 + k, scale=scale))
                elif name == "up_proj.bias":
                    p.copy_(torch.linspace(-0.1, 0.1, p.numel()))

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        h = self.embed_tokens(idx)
        h = h + torch.tanh(self.q_proj(h))
        h = h + self.down_proj(torch.relu(self.up_proj(h))) / 4
        h = h + self.narrow_out(torch.tanh(self.narrow_in(h)))
        return self.lm_head(self.norm(h))

    def matrices(self) -> list[nn.Parameter]:
        """The hidden matrices, in parameter order (what LLRMuon gives to Muon)."""
        return [self.q_proj.weight, self.up_proj.weight, self.down_proj.weight, self.narrow_in.weight, self.narrow_out.weight]

    def others(self) -> list[nn.Parameter]:
        ids = {id(p) for p in self.matrices()}
        return [p for p in self.parameters() if id(p) not in ids]
