"""Attentive pooling: the learned read-out of the attentive probe (V-JEPA, I-JEPA, "MAE features need it").

MAE tokens are not trained to be averaged: their mean throws away which token holds the
signal, and a linear probe on it underrates MAE (He et al. 2022; V-JEPA, Bardes et al. 2024,
probe frozen tokens with attentive pooling instead). One learned query cross-attends over the
valid tokens of a scan (brain tokens; padding and background hidden by the token mask) and its
output, the attention-weighted sum of projected tokens, is the scan's feature vector. With a
frozen encoder (``mode: linear_probe``, ``pooling: attentive``) only this pooler, the feature
norm and the linear head train: the attentive probe.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class AttentivePooler(nn.Module):
    """(B, L, C) tokens with (B, L) validity -> (B, C): a learned query's multi-head cross-attention."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"width {dim} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.query = nn.Parameter(torch.zeros(1, 1, dim))
        nn.init.trunc_normal_(self.query, std=0.02)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, tokens: torch.Tensor, token_mask: torch.Tensor) -> torch.Tensor:
        b, n, c = tokens.shape
        heads, width = self.num_heads, c // self.num_heads
        q = self.q(self.query).reshape(1, 1, heads, width).transpose(1, 2).expand(b, -1, -1, -1)
        k, v = self.kv(self.norm(tokens)).reshape(b, n, 2, heads, width).permute(2, 0, 3, 1, 4)
        x = F.scaled_dot_product_attention(q, k, v, attn_mask=token_mask[:, None, None, :])
        return self.proj(x.reshape(b, c))
