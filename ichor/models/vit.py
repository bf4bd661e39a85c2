"""A plain 3D Vision Transformer encoder: the part of the MAE that downstream tasks keep.

Design choices, for readers who know ViT/MAE:
- Patch embedding is a ``Linear`` on patchified voxels rather than a ``Conv3d(stride=p)``.
  The two are the same map (see :mod:`ichor.models.patching` for the voxel order), but the
  linear form embeds only the tokens actually used: with 75 % masking and non-brain patches
  dropped, that is a fraction of the grid.
- No ``cls`` token by default: downstream pooling is the mean of brain tokens. Imported
  encoders trained with one (MONAI's ``MaskedAutoEncoderViT``) keep it (``cls_token=True``):
  it is prepended before the blocks, so every token attends to it as in training, and dropped
  from the output.
- Position embeddings are fixed 3D sin-cos tables (``pos_embed="sincos"``) held in a
  non-persistent buffer: they are not in ``state_dict()``, so weights load at any input shape;
  :meth:`ViTEncoder3D.set_img_size` regenerates them. Imported encoders with learned tables
  (``pos_embed="learned"``) hold them as a parameter, interpolated to a new grid.
- Variable token counts per scan (brain sizes differ) are padded to the longest in the batch
  and hidden from attention with a key-padding mask passed to ``scaled_dot_product_attention``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from ichor.models.config import ViTConfig
from ichor.models.patching import brain_patches, grid_size, patchify
from ichor.models.pos_embed import resize_table, sincos_3d


def init_weights(module: nn.Module) -> None:
    """MAE initialisation: xavier-uniform linear weights, zero biases, unit LayerNorms."""
    if isinstance(module, nn.Linear):
        nn.init.xavier_uniform_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


def gather_tokens(x: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Rows ``ids`` (B, K) of each sample of ``x`` (B, L, C), or of one table ``x`` (1, L, C) -> (B, K, C).

    One ``index_select`` of whole rows: on a CPU several times faster than ``torch.gather``
    with an index expanded over the channels.
    """
    b, k = ids.shape
    rows = ids if x.shape[0] == 1 else ids + x.shape[1] * torch.arange(b, device=ids.device)[:, None]
    return x.reshape(-1, x.shape[-1]).index_select(0, rows.reshape(-1)).view(b, k, x.shape[-1])


def padding_mask(lengths: torch.Tensor, size: int) -> torch.Tensor:
    """(B,) token counts -> (B, size) bool, True for real tokens, False for padding."""
    return torch.arange(size, device=lengths.device)[None, :] < lengths[:, None]


def check_has_brain(counts: list[int]) -> None:
    """A scan without a single brain patch cannot be encoded brain-only: say which one."""
    empty = [i for i, n in enumerate(counts) if n == 0]
    if empty:
        raise ValueError(
            f"batch item(s) {empty} have no brain patch (brain mask empty, or an all-zero image "
            "when no mask is given): check the data, or lower min_brain_fraction"
        )


class Attention(nn.Module):
    """Multi-head self-attention on ``F.scaled_dot_product_attention`` (flash/memory-efficient kernels)."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"width {dim} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, key_padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        attn_mask = None if key_padding_mask is None else key_padding_mask[:, None, None, :]
        x = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        return self.proj(x.transpose(1, 2).reshape(b, n, c))


def drop_path(x: torch.Tensor, prob: float, training: bool) -> torch.Tensor:
    """Stochastic depth: zero a residual branch ``x`` (B, ...) for a random ``prob`` of the samples, rescaling the rest."""
    if prob == 0.0 or not training:
        return x
    keep = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(1.0 - prob)
    return x * keep / (1.0 - prob)


class Block(nn.Module):
    """Pre-norm Transformer block: x + attn(norm(x)), then x + mlp(norm(x)).

    ``drop_path`` (stochastic depth, a fine-tuning regulariser; 0 in pre-training) drops each
    residual branch per sample while training.
    """

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, norm_eps: float = 1e-6) -> None:
        super().__init__()
        hidden = round(dim * mlp_ratio)  # round: an imported MLP width (512 for 768) is not a float-exact ratio
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))
        self.drop_path = 0.0

    def forward(self, x: torch.Tensor, key_padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        x = x + drop_path(self.attn(self.norm1(x), key_padding_mask), self.drop_path, self.training)
        return x + drop_path(self.mlp(self.norm2(x)), self.drop_path, self.training)


def run_blocks(
    blocks: nn.ModuleList,
    x: torch.Tensor,
    key_padding_mask: torch.Tensor | None,
    grad_checkpointing: bool,
) -> torch.Tensor:
    """Apply ``blocks`` in turn, recomputing each in backward when checkpointing (saves activations)."""
    for block in blocks:
        if grad_checkpointing and torch.is_grad_enabled():
            x = checkpoint(block, x, key_padding_mask, use_reentrant=False)
        else:
            x = block(x, key_padding_mask)
    return x


class PatchEmbed3D(nn.Module):
    """Linear embedding of patchified voxels (B, K, C*p^3) -> tokens (B, K, embed_dim)."""

    def __init__(self, patch_size: int, in_chans: int, embed_dim: int) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Linear(in_chans * patch_size**3, embed_dim)

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        return self.proj(patches)


class ViTEncoder3D(nn.Module):
    """3D ViT encoder over cubic patches of a (B, C, D, H, W) volume.

    Args:
        config: the architecture (:class:`ichor.models.ViTConfig`; of an ``MAEConfig``, its encoder part).
        img_size: (D, H, W) input shape, each a multiple of ``config.patch_size``.
        grad_checkpointing: recompute blocks in backward (less memory, about 30 % more compute).
    """

    def __init__(self, config: ViTConfig, img_size: tuple[int, int, int], grad_checkpointing: bool = False) -> None:
        super().__init__()
        self.config = config = config.encoder()
        # The geometry that callers read, as nn.Linear's in_features: the config is its source.
        self.patch_size, self.in_chans, self.embed_dim = config.patch_size, config.in_chans, config.embed_dim
        self.depth, self.num_heads, self.min_brain_fraction = config.depth, config.num_heads, config.min_brain_fraction
        self.grad_checkpointing = grad_checkpointing
        self.patch_embed = PatchEmbed3D(config.patch_size, config.in_chans, config.embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, config.embed_dim)) if config.cls_token else None
        self.blocks = nn.ModuleList(
            [Block(config.embed_dim, config.num_heads, config.mlp_ratio, config.norm_eps) for _ in range(config.depth)]
        )
        self.norm = nn.LayerNorm(config.embed_dim, eps=config.norm_eps)
        self.set_img_size(img_size)
        self.apply(init_weights)

    def set_img_size(self, img_size: tuple[int, int, int]) -> None:
        """Adopt a new input shape: regenerate a fixed position table, or interpolate a learned one."""
        old_grid = getattr(self, "grid", None)
        self.grid = grid_size(img_size, self.patch_size)
        self.img_size = tuple(int(n) for n in img_size)
        self.num_patches = self.grid[0] * self.grid[1] * self.grid[2]
        device = self.patch_embed.proj.weight.device
        if self.config.pos_embed == "sincos":
            table = sincos_3d(self.grid, self.embed_dim).unsqueeze(0).to(device)
            self.register_buffer("pos_embed", table, persistent=False)
        elif old_grid is None:  # learned, at construction: filled by load_state_dict
            self.pos_embed = nn.Parameter(torch.zeros(1, self.num_patches, self.embed_dim, device=device))
        elif old_grid != self.grid:
            self.pos_embed = nn.Parameter(resize_table(self.pos_embed.detach(), old_grid, self.grid))

    def set_drop_path(self, rate: float) -> None:
        """Stochastic depth rising linearly from 0 at the first block to ``rate`` at the last (as in BEiT/MAE
        fine-tuning); a training setting, not part of the architecture (``config``)."""
        if not 0.0 <= rate < 1.0:
            raise ValueError(f"drop_path must be in [0, 1), got {rate}")
        for i, block in enumerate(self.blocks):
            block.drop_path = rate * i / max(len(self.blocks) - 1, 1)

    def patchify(self, imgs: torch.Tensor) -> torch.Tensor:
        """(B, C, D, H, W) -> (B, L, C*p^3), checking the shape against the position table."""
        patches = patchify(imgs, self.patch_size)
        if tuple(imgs.shape[2:]) != self.img_size:
            raise ValueError(
                f"input spatial shape {tuple(imgs.shape[2:])} differs from the model's img_size "
                f"{self.img_size}: call set_img_size({tuple(imgs.shape[2:])}) to use the weights at this shape"
            )
        return patches

    def embed(self, patches: torch.Tensor, ids: torch.Tensor | None = None) -> torch.Tensor:
        """Tokens for ``patches`` (B, K, C*p^3) sitting at grid positions ``ids`` (B, K); all if None."""
        x = self.patch_embed(patches)
        pos = self.pos_embed.to(x.dtype)
        if ids is None:
            return x + pos
        return x + gather_tokens(pos, ids)

    def forward_blocks(self, x: torch.Tensor, key_padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Transformer blocks and the final LayerNorm (with the ``cls`` token in front, if any, dropped after)."""
        if self.cls_token is None:
            return self.norm(run_blocks(self.blocks, x, key_padding_mask, self.grad_checkpointing))
        x = torch.cat([self.cls_token.to(x.dtype).expand(x.shape[0], -1, -1), x], dim=1)
        if key_padding_mask is not None:
            key_padding_mask = F.pad(key_padding_mask, (1, 0), value=True)
        return self.norm(run_blocks(self.blocks, x, key_padding_mask, self.grad_checkpointing))[:, 1:]

    def forward_features(
        self, imgs: torch.Tensor, brain_mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Encode a batch for downstream use.

        Returns ``tokens`` (B, L, C) in grid order and ``token_mask`` (B, L) bool. Without
        ``brain_mask`` every patch is encoded and ``token_mask`` is all True. With it, only
        brain patches are encoded (they attend only to each other); other rows are zero and
        False in ``token_mask``, so ``(tokens * m).sum(1) / m.sum(1)`` is the brain mean.
        """
        patches = self.patchify(imgs)
        if brain_mask is None:
            tokens = self.forward_blocks(self.embed(patches))
            return tokens, torch.ones(tokens.shape[:2], dtype=torch.bool, device=tokens.device)
        token_mask = brain_patches(brain_mask, self.patch_size, self.min_brain_fraction)
        counts = token_mask.sum(1)
        sizes = counts.tolist()  # one host sync: the padded length must be a Python int
        check_has_brain(sizes)
        longest = max(sizes)
        # Brain patches first, in grid order; the rest are padding that attention ignores.
        ids = torch.argsort((~token_mask).to(torch.uint8), dim=1, stable=True)[:, :longest]
        valid = padding_mask(counts, longest)
        x = self.embed(gather_tokens(patches, ids), ids)
        x = self.forward_blocks(x, None if min(sizes) == longest else valid)
        x = torch.where(valid.unsqueeze(-1), x, 0.0)
        tokens = x.new_zeros(x.shape[0], self.num_patches, x.shape[-1])
        tokens = tokens.scatter(1, ids.unsqueeze(-1).expand_as(x), x)
        return tokens, token_mask

    def forward(self, imgs: torch.Tensor, brain_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        return self.forward_features(imgs, brain_mask)
