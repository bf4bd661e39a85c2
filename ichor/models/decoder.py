"""The light Transformer decoder that MAE and Models Genesis share: encoder tokens -> voxels of each patch."""

from __future__ import annotations

from functools import partial

import torch
from torch import nn

from ichor.models.pos_embed import sincos_3d
from ichor.models.vit import Block, gather_tokens, run_blocks

# Parts of the decoder whose state-dict names were ``decoder_<part>`` before it was shared (in the
# MAE and in Models Genesis' own decoder): checkpoints written then still load, and resume.
LEGACY_PARTS = ("embed", "blocks", "norm", "pred")


def rename_on_load(module: nn.Module, state_dict: dict, prefix: str, *args: object, renames: dict[str, str]) -> None:
    """Load-state-dict pre-hook: rename keys that start with ``prefix + old`` to ``prefix + new``, in place."""
    for key in list(state_dict):
        for old, new in renames.items():
            if key.startswith(prefix + old):
                state_dict[prefix + new + key[len(prefix + old) :]] = state_dict.pop(key)


class TransformerDecoder(nn.Module):
    """Encoder tokens -> voxel predictions: ``embed`` (to the decoder width) and ``positions`` (fixed
    sin-cos) are for the caller, which places tokens (MAE adds mask tokens between them);
    ``forward`` runs the blocks and predicts the voxels of each row.

    The owner initialises the weights (``apply(init_weights)``), so that a model built from
    parts draws its initial weights in one fixed order.

    Args:
        grid: patch grid (D, H, W) of the input; positions are a fixed table over it.
        patch_size, in_chans: what each prediction row holds: ``in_chans * patch_size**3`` voxels.
        embed_dim: width of the encoder tokens it reads.
        decoder_embed_dim, decoder_depth, decoder_num_heads, mlp_ratio: its own Transformer.
        grad_checkpointing: recompute blocks in backward.
    """

    def __init__(
        self,
        grid: tuple[int, int, int],
        patch_size: int,
        in_chans: int,
        embed_dim: int,
        decoder_embed_dim: int,
        decoder_depth: int,
        decoder_num_heads: int,
        mlp_ratio: float = 4.0,
        grad_checkpointing: bool = False,
    ) -> None:
        super().__init__()
        self.grad_checkpointing = grad_checkpointing
        self.embed = nn.Linear(embed_dim, decoder_embed_dim)
        self.blocks = nn.ModuleList(
            [Block(decoder_embed_dim, decoder_num_heads, mlp_ratio) for _ in range(decoder_depth)]
        )
        self.norm = nn.LayerNorm(decoder_embed_dim, eps=1e-6)
        self.pred = nn.Linear(decoder_embed_dim, in_chans * patch_size**3)
        self.set_grid(grid)
        self.register_load_state_dict_pre_hook(
            partial(rename_on_load, renames={f"decoder_{part}.": f"{part}." for part in LEGACY_PARTS})
        )

    def set_grid(self, grid: tuple[int, int, int]) -> None:
        """Regenerate the position table for another input shape (weights are unaffected)."""
        table = sincos_3d(grid, self.embed.out_features).unsqueeze(0).to(self.embed.weight.device)
        self.register_buffer("pos_embed", table, persistent=False)

    def positions(self, x: torch.Tensor, ids: torch.Tensor | None = None) -> torch.Tensor:
        """Position embeddings for the rows of ``x`` (B, K, D) sitting at grid positions ``ids`` (B, K); all if None."""
        table = self.pos_embed.to(x.dtype).expand(x.shape[0], -1, -1)
        return table if ids is None else gather_tokens(table, ids)

    def forward(self, x: torch.Tensor, key_padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Decoder-width tokens with positions (B, K, D) -> voxel predictions (B, K, in_chans * p^3)."""
        x = run_blocks(self.blocks, x, key_padding_mask, self.grad_checkpointing)
        return self.pred(self.norm(x))
