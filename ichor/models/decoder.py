"""The light Transformer decoder that MAE and Models Genesis share: encoder tokens -> voxels of each patch."""

from __future__ import annotations

import torch
from torch import nn

from ichor.models.config import MAEConfig
from ichor.models.pos_embed import sincos_3d
from ichor.models.vit import Block, gather_tokens, run_blocks


class TransformerDecoder(nn.Module):
    """Encoder tokens -> voxel predictions: ``embed`` (to the decoder width) and ``positions`` (fixed
    sin-cos) are for the caller, which places tokens (MAE adds mask tokens between them);
    ``forward`` runs the blocks and predicts the voxels of each row.

    The owner initialises the weights (``apply(init_weights)``), so that a model built from
    parts draws its initial weights in one fixed order.

    Args:
        config: its widths (``decoder_embed_dim``, ``decoder_depth``, ``decoder_num_heads``,
            ``mlp_ratio``), the encoder tokens it reads (``embed_dim``) and what each prediction
            row holds (``in_chans * patch_size**3`` voxels).
        grid: patch grid (D, H, W) of the input; positions are a fixed table over it.
        grad_checkpointing: recompute blocks in backward.
    """

    def __init__(self, config: MAEConfig, grid: tuple[int, int, int], grad_checkpointing: bool = False) -> None:
        super().__init__()
        self.grad_checkpointing = grad_checkpointing
        width = config.decoder_embed_dim
        self.embed = nn.Linear(config.embed_dim, width)
        self.blocks = nn.ModuleList(
            [Block(width, config.decoder_num_heads, config.mlp_ratio) for _ in range(config.decoder_depth)]
        )
        self.norm = nn.LayerNorm(width, eps=1e-6)
        self.pred = nn.Linear(width, config.in_chans * config.patch_size**3)
        self.set_grid(grid)

    def set_grid(self, grid: tuple[int, int, int]) -> None:
        """Regenerate the position table for another input shape (weights are unaffected)."""
        table = sincos_3d(grid, self.embed.out_features).unsqueeze(0).to(self.embed.weight.device)
        self.register_buffer("pos_embed", table, persistent=False)

    def positions(self, x: torch.Tensor, ids: torch.Tensor | None = None) -> torch.Tensor:
        """Position embeddings for the rows of ``x`` (B, K, D) sitting at grid positions ``ids`` (B, K); all if None."""
        table = self.pos_embed.to(x.dtype)
        return table.expand(x.shape[0], -1, -1) if ids is None else gather_tokens(table, ids)

    def forward(
        self, x: torch.Tensor, key_padding_mask: torch.Tensor | None = None, loss_rows: slice | None = None
    ) -> torch.Tensor:
        """Decoder-width tokens with positions (B, K, D) -> voxel predictions (B, K, in_chans * p^3).

        ``loss_rows``: the only rows a loss reads. The others are predicted without a gradient, so
        that the widest layer (one output per voxel) backpropagates through the loss rows alone.
        """
        x = run_blocks(self.blocks, x, key_padding_mask, self.grad_checkpointing)
        if loss_rows is None or not torch.is_grad_enabled():
            return self.predict(x)
        with torch.no_grad():
            before, after = self.predict(x[:, : loss_rows.start]), self.predict(x[:, loss_rows.stop :])
        return torch.cat([before, self.predict(x[:, loss_rows]), after], dim=1)

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        return self.pred(self.norm(x))
