"""Small sequence and convolutional models for the network-Fisher tests (float64, random weights)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

F64 = torch.float64


class TinyGPT(nn.Module):
    """nanoGPT-style decoder: token + position embeddings (positions indexed without a batch dimension),
    ``nn.TransformerEncoderLayer`` blocks with a causal mask, a final LayerNorm and an output head tied to
    the token embedding (``F.linear(h, tok.weight)``) or its own Linear. Outputs ``[n, T, V]``."""

    def __init__(
        self, vocab: int = 11, d: int = 8, context: int = 6, layers: int = 2, heads: int = 2, tied: bool = True
    ) -> None:
        super().__init__()
        self.tok = nn.Embedding(vocab, d)
        self.pos = nn.Embedding(context, d)
        self.blocks = nn.ModuleList(
            nn.TransformerEncoderLayer(d, heads, 2 * d, dropout=0.0, batch_first=True, norm_first=True)
            for _ in range(layers)
        )
        self.ln = nn.LayerNorm(d)
        self.head = None if tied else nn.Linear(d, vocab, bias=False)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        t = idx.shape[1]
        h = self.tok(idx) + self.pos(torch.arange(t, device=idx.device))
        mask = nn.Transformer.generate_square_subsequent_mask(t, dtype=h.dtype, device=h.device)
        for b in self.blocks:
            h = b(h, src_mask=mask, is_causal=True)
        h = self.ln(h)
        return F.linear(h, self.tok.weight) if self.head is None else self.head(h)


class EncoderClassifier(nn.Module):
    """Embedding → post-norm ``nn.TransformerEncoder`` with a key padding mask (token 0 is padding) →
    mean over the unpadded positions → Linear: outputs ``[n, C]``."""

    def __init__(self, vocab: int = 9, d: int = 8, heads: int = 2, classes: int = 3) -> None:
        super().__init__()
        self.emb = nn.Embedding(vocab, d, padding_idx=0)
        layer = nn.TransformerEncoderLayer(d, heads, 2 * d, dropout=0.0, batch_first=True)
        self.enc = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.out = nn.Linear(d, classes)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        pad = idx == 0
        h = self.enc(self.emb(idx), src_key_padding_mask=pad)
        keep = (~pad).to(h.dtype).unsqueeze(-1)
        return self.out((h * keep).sum(1) / keep.sum(1).clamp_min(1))


class CrossAttention(nn.Module):
    """Sequence-first cross-attention (query ≠ key = value) and attention with kdim/vdim ≠ embed_dim."""

    def __init__(self, d: int = 6, heads: int = 2, src_dim: int = 5, classes: int = 4) -> None:
        super().__init__()
        self.q = nn.Linear(3, d)
        self.cross = nn.MultiheadAttention(d, heads)  # batch_first=False: [T, n, d]
        self.other = nn.MultiheadAttention(d, heads, kdim=src_dim, vdim=src_dim, batch_first=True)
        self.out = nn.Linear(d, classes)

    def forward(self, tgt: torch.Tensor, src: torch.Tensor) -> torch.Tensor:
        q = self.q(tgt)  # [n, T, d]
        kv = F.pad(src, (0, q.shape[-1] - src.shape[-1])).transpose(0, 1)  # key is value: one K/V projection
        h, _ = self.cross(q.transpose(0, 1), kv, kv, need_weights=False)
        h2, _ = self.other(h.transpose(0, 1), src, src)  # need_weights=True (default)
        return self.out(torch.tanh(h2))


class RMSNormMLP(nn.Module):
    """Per-position MLP on ``[n, T, 4]`` with RMSNorm and GroupNorm: outputs ``[n, T, 3]``."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(4, 6)
        self.rms = nn.RMSNorm(6)
        self.b = nn.Linear(6, 6)
        self.gn = nn.GroupNorm(2, 6)
        self.c = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.gelu(self.rms(self.a(x)))
        h = self.b(h)
        h = self.gn(h.transpose(1, 2)).transpose(1, 2)  # groups over channels, positions as spatial
        return self.c(torch.tanh(h))


class Conv1dNet(nn.Module):
    """Conv1d with dilation and padding, a grouped strided Conv1d, outputs ``[n, C]``."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv1d(2, 4, 3, padding=2, dilation=2)
        self.c2 = nn.Conv1d(4, 4, 2, stride=2, groups=2, padding_mode="circular", padding=1)
        self.fc = nn.Linear(4 * 5, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.tanh(self.c2(torch.tanh(self.c1(x)))).flatten(1))


class GroupedConv2dNet(nn.Module):
    """Grouped, dilated Conv2d with 'same' reflect padding; grouped strided Conv2d; BatchNorm (eval)."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(4, 6, 3, groups=2, dilation=2, padding="same", padding_mode="reflect")
        self.bn = nn.BatchNorm2d(6)
        self.c2 = nn.Conv2d(6, 6, 2, stride=2, groups=3, bias=False)
        self.fc = nn.Linear(6 * 2 * 2, 3)
        with torch.no_grad():
            self.bn.running_mean.uniform_(-0.3, 0.3)
            self.bn.running_var.uniform_(0.5, 2.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.tanh(self.c2(torch.tanh(self.bn(self.c1(x))))).flatten(1))


class GRUNet(nn.Module):
    """Embedding → sequence-first GRU → LSTM (batch first) → per-position Linear: outputs ``[n, T, C]``."""

    def __init__(self, vocab: int = 7, d: int = 4, classes: int = 3) -> None:
        super().__init__()
        self.emb = nn.Embedding(vocab, d)
        self.gru = nn.GRU(d, d)
        self.lstm = nn.LSTM(d, d, batch_first=True)
        self.out = nn.Linear(d, classes)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        h, _ = self.gru(self.emb(idx).transpose(0, 1))
        h, _ = self.lstm(h.transpose(0, 1))
        return self.out(h)


class TinyResNet(nn.Module):
    """ResNet topology at a tiny size: a stem, two BasicBlocks (3×3 convolutions, BatchNorm in eval mode,
    residual connections, one strided with a 1×1 projection), global average pooling, a Linear head."""

    def __init__(self, w: int = 3, classes: int = 4) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(2, w, 3, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU())
        self.a1, self.n1 = nn.Conv2d(w, w, 3, padding=1, bias=False), nn.BatchNorm2d(w)
        self.a2, self.n2 = nn.Conv2d(w, w, 3, padding=1, bias=False), nn.BatchNorm2d(w)
        self.b1, self.m1 = nn.Conv2d(w, 2 * w, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(2 * w)
        self.b2, self.m2 = nn.Conv2d(2 * w, 2 * w, 3, padding=1, bias=False), nn.BatchNorm2d(2 * w)
        self.proj = nn.Sequential(nn.Conv2d(w, 2 * w, 1, stride=2, bias=False), nn.BatchNorm2d(2 * w))
        self.fc = nn.Linear(2 * w, classes)
        with torch.no_grad():
            for m in self.modules():
                if isinstance(m, nn.BatchNorm2d):
                    m.running_mean.uniform_(-0.2, 0.2)
                    m.running_var.uniform_(0.5, 1.5)
                    m.weight.uniform_(0.5, 1.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.stem(x)
        h = F.relu(self.n2(self.a2(F.relu(self.n1(self.a1(h))))) + h)
        h = F.relu(self.m2(self.b2(F.relu(self.m1(self.b1(h))))) + self.proj(h))
        return self.fc(h.mean((2, 3)))


def make(name: str, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    cls = {
        "gpt": TinyGPT,
        "gpt_untied": lambda: TinyGPT(tied=False),
        "encoder": EncoderClassifier,
        "cross": CrossAttention,
        "rmsnorm": RMSNormMLP,
        "conv1d": Conv1dNet,
        "conv2d": GroupedConv2dNet,
        "gru": GRUNet,
        "resnet": TinyResNet,
    }[name]
    return cls().to(F64).eval()


def inputs(name: str, n: int = 5, seed: int = 1) -> tuple[torch.Tensor, ...]:
    """A batch for model ``name`` (a tuple of positional inputs)."""
    g = torch.Generator().manual_seed(seed)
    if name in ("gpt", "gpt_untied"):
        return (torch.randint(0, 11, (n, 6), generator=g),)
    if name == "encoder":
        idx = torch.randint(1, 9, (n, 5), generator=g)
        idx[0, 3:] = 0  # padding
        idx[2, 4:] = 0
        return (idx,)
    if name == "cross":
        return torch.randn(n, 4, 3, generator=g, dtype=F64), torch.randn(n, 3, 5, generator=g, dtype=F64)
    if name == "rmsnorm":
        return (torch.randn(n, 3, 4, generator=g, dtype=F64),)
    if name == "conv1d":
        return (torch.randn(n, 2, 9, generator=g, dtype=F64),)
    if name == "conv2d":
        return (torch.randn(n, 4, 5, 5, generator=g, dtype=F64),)
    if name == "gru":
        return (torch.randint(0, 7, (n, 5), generator=g),)
    if name == "resnet":
        return (torch.randn(n, 2, 6, 6, generator=g, dtype=F64),)
    raise AssertionError(name)
