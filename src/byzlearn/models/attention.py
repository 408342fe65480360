"""A tiny self-attention classifier for token sequences (the ACClip attention study).

Inputs are token ids stored as floats, ``Tensor[B, L]`` (the ``Dataset`` convention is float x);
they are rounded to integers and embedded. Then a learned positional embedding, ``BLOCKS`` pre-norm
transformer blocks (multi-head softmax(Q K^T / sqrt(d_head)) V attention written out explicitly, and a
two-layer GELU MLP), a final layer norm, mean pooling over the positions and a linear head.
Everything is plain tensor algebra, so ``torch.func.vmap(grad(...))`` batches it over workers.

``attention`` (d_model 32, 2 heads, 2 blocks, MLP width 64, vocabulary ``VOCAB`` = 32): about 19k
parameters for sequences of length 16.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .zoo import MODELS

VOCAB = 32  # token ids must lie in [0, VOCAB); the "sequence" data set uses the same vocabulary


class Block(nn.Module):
    """Pre-norm transformer block: x + MHA(LN(x)), then x + MLP(LN(x))."""

    def __init__(self, d_model: int, heads: int, d_mlp: int):
        super().__init__()
        if d_model % heads:
            raise ValueError(f"d_model ({d_model}) must be a multiple of heads ({heads})")
        self.heads = heads
        self.ln1, self.ln2 = nn.LayerNorm(d_model), nn.LayerNorm(d_model)
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)
        self.fc1, self.fc2 = nn.Linear(d_model, d_mlp), nn.Linear(d_mlp, d_model)

    def forward(self, x: Tensor) -> Tensor:
        b, length, d = x.shape
        h = self.heads
        q, k, v = self.qkv(self.ln1(x)).split(d, dim=-1)
        q, k, v = (t.reshape(b, length, h, d // h).transpose(1, 2) for t in (q, k, v))  # [B, H, L, dh]
        att = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d // h), dim=-1)
        x = x + self.proj((att @ v).transpose(1, 2).reshape(b, length, d))
        return x + self.fc2(F.gelu(self.fc1(self.ln2(x))))


class AttentionClassifier(nn.Module):
    """Token + position embedding, transformer blocks, layer norm, mean pooling, linear head."""

    def __init__(
        self, length: int, num_classes: int, vocab: int = VOCAB, d_model: int = 32, heads: int = 2, blocks: int = 2, d_mlp: int = 64
    ):
        super().__init__()
        self.vocab = vocab
        self.tok = nn.Embedding(vocab, d_model)
        self.pos = nn.Parameter(torch.randn(length, d_model) * 0.02)
        nn.init.normal_(self.tok.weight, std=0.02 * math.sqrt(d_model))
        self.blocks = nn.ModuleList(Block(d_model, heads, d_mlp) for _ in range(blocks))
        self.ln = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        ids = x.round().long()  # float token ids -> indices (no gradient flows to the inputs)
        h = self.tok(ids) + self.pos
        for blk in self.blocks:
            h = blk(h)
        return self.head(self.ln(h).mean(dim=1))


@MODELS.register("attention")
def attention(input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """Two-block, two-head self-attention classifier (d_model 32) over token-id sequences ``(L,)``; vocabulary 32."""
    if len(input_shape) != 1:
        raise ValueError(f"attention needs token-id sequences of shape (L,), got {input_shape}")
    return AttentionClassifier(input_shape[0], num_classes)
