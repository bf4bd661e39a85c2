"""LoRA (low-rank adaptation) of a frozen :class:`~ichor.models.vit.ViTEncoder3D`'s attention.

A targeted projection ``W`` gains a trainable ``(alpha / rank) * B @ A`` with ``B`` zero, so training starts
from the frozen encoder exactly (Hu et al. 2021). Each slice of the fused ``qkv`` (query, key, value) and
``proj`` gets its own adapter, which gives the paper's 589,824 on ViT-B at rank 8 where one adapter on ``qkv``
(PEFT's way) gives 442,368; why not PEFT: docs/tutorials/probes-finetuning.md.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn

from ichor.io import atomic_path, load_tensors, write_text
from ichor.models.vit import ViTEncoder3D

# Target name -> (module in each block's attention, row slice of that module's output in widths).
# The fused ``qkv`` Linear's output is query, key, value side by side (see vit.Attention).
TARGETS: dict[str, tuple[str, int]] = {
    "query": ("qkv", 0),
    "key": ("qkv", 1),
    "value": ("qkv", 2),
    "output": ("proj", 0),
}
ADAPTER_MARK = ".lora_"  # in the state-dict key of every adapter tensor, never in a base weight's
ADAPTERS_FILE = "lora.safetensors"
ADAPTERS_RECORD = "lora.json"
ADAPTERS_FORMAT = "ichor-lora"
ADAPTERS_FORMAT_VERSION = 1


@dataclass
class LoRA:
    """LoRA settings (defaults: the ICHOR paper's).

    Args:
        rank: rank of each update ``B @ A``.
        alpha: scale numerator: updates are multiplied by ``alpha / rank``.
        dropout: dropout on the adapters' input (not on the frozen path), while training.
        targets: attention projections to adapt in every block: ``query``, ``key``, ``value``, ``output``.
    """

    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    targets: tuple[str, ...] = ("query", "key", "value", "output")

    def __post_init__(self) -> None:
        self.targets = tuple(self.targets)
        if self.rank < 1:
            raise ValueError(f"LoRA rank must be at least 1, got {self.rank}")
        if self.alpha <= 0:
            raise ValueError(f"LoRA alpha must be positive, got {self.alpha}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"LoRA dropout must be in [0, 1), got {self.dropout}")
        unknown = [t for t in self.targets if t not in TARGETS]
        if unknown or not self.targets or len(set(self.targets)) != len(self.targets):
            raise ValueError(
                f"LoRA targets must be distinct names among {', '.join(TARGETS)}, got {list(self.targets)}"
            )

    @property
    def scale(self) -> float:
        return self.alpha / self.rank

    def as_dict(self) -> dict[str, Any]:
        """Plain values, as checkpoints and records keep them."""
        return {**asdict(self), "targets": list(self.targets)}


class LoRALinear(nn.Linear):
    """A frozen ``nn.Linear`` plus one low-rank update per adapted slice of its output rows.

    ``slices`` maps an adapter name to the (start, stop) rows of the output it updates; the
    base ``weight`` and ``bias`` keep their names and are frozen.
    """

    def __init__(self, base: nn.Linear, slices: dict[str, tuple[int, int]], settings: LoRA) -> None:
        super().__init__(base.in_features, base.out_features, bias=base.bias is not None, device="meta")
        self.weight, self.bias = base.weight, base.bias  # the base's own parameters, not copies
        self.requires_grad_(False)
        self.slices = dict(sorted(slices.items(), key=lambda item: item[1]))  # in output order
        self.scale = settings.scale
        self.dropout = nn.Dropout(settings.dropout)
        weight = base.weight
        self.lora_A = nn.ParameterDict(
            {name: nn.Parameter(weight.new_empty(settings.rank, self.in_features)) for name in self.slices}
        )
        self.lora_B = nn.ParameterDict(
            {
                name: nn.Parameter(weight.new_zeros(stop - start, settings.rank))
                for name, (start, stop) in self.slices.items()
            }
        )
        for a in self.lora_A.values():
            nn.init.kaiming_uniform_(a, a=math.sqrt(5))  # PEFT's initialisation of A; B = 0

    def delta_weight(self) -> torch.Tensor:
        """The update of ``weight`` (out x in) that the adapters add: zero outside the adapted slices."""
        delta = torch.zeros_like(self.weight)
        for name, (start, stop) in self.slices.items():
            delta[start:stop] = self.scale * self.lora_B[name] @ self.lora_A[name]
        return delta

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.linear(x, self.weight, self.bias)
        h = self.dropout(x)
        parts, at = [], 0
        for name, (start, stop) in self.slices.items():
            if start > at:
                parts.append(out.new_zeros(*out.shape[:-1], start - at))
            parts.append(F.linear(F.linear(h, self.lora_A[name]), self.lora_B[name]) * self.scale)
            at = stop
        if at < self.out_features:
            parts.append(out.new_zeros(*out.shape[:-1], self.out_features - at))
        return out + torch.cat(parts, dim=-1)

    def merged(self) -> nn.Linear:
        """A plain ``nn.Linear`` computing what this module computes in eval mode."""
        linear = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None, device=self.weight.device)
        with torch.no_grad():
            linear.weight.copy_(self.weight + self.delta_weight())
            if self.bias is not None:
                linear.bias.copy_(self.bias)
        return linear


def add_lora(encoder: ViTEncoder3D, settings: LoRA) -> ViTEncoder3D:
    """Freeze ``encoder`` and give every block's targeted projections adapters (in place; returns it).

    Only the adapters train afterwards; the base weights keep their state-dict keys.
    """
    if adapted_modules(encoder):
        raise ValueError("the encoder already has LoRA adapters")
    encoder.requires_grad_(False)
    width = encoder.embed_dim
    for block in encoder.blocks:
        slices: dict[str, dict[str, tuple[int, int]]] = {}
        for target in settings.targets:
            module, index = TARGETS[target]
            slices.setdefault(module, {})[target] = (index * width, (index + 1) * width)
        for module, parts in slices.items():
            setattr(block.attn, module, LoRALinear(getattr(block.attn, module), parts, settings))
    return encoder


def adapted_modules(encoder: nn.Module) -> dict[str, LoRALinear]:
    return {name: module for name, module in encoder.named_modules() if isinstance(module, LoRALinear)}


def merge_lora(encoder: ViTEncoder3D) -> ViTEncoder3D:
    """Fold every adapter into its frozen weights (in place; returns the encoder): a plain encoder again."""
    for name, module in adapted_modules(encoder).items():
        parent, _, child = name.rpartition(".")
        setattr(encoder.get_submodule(parent), child, module.merged())
    return encoder


def adapter_state(encoder: nn.Module) -> dict[str, torch.Tensor]:
    """The adapters' tensors, under their state-dict keys."""
    return {k: v for k, v in encoder.state_dict().items() if ADAPTER_MARK in k}


def base_fingerprint(encoder: nn.Module) -> str:
    """sha256 of the frozen (non-adapter) weights, as float32: which base encoder adapters belong to."""
    digest = hashlib.sha256()
    for key, value in sorted(encoder.state_dict().items()):
        if ADAPTER_MARK in key:
            continue
        digest.update(f"{key}:{tuple(value.shape)};".encode())
        digest.update(value.detach().float().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def save_adapters(encoder: ViTEncoder3D, settings: LoRA, out_dir: str | Path, base: dict[str, Any]) -> Path:
    """Write the adapters alone (``lora.safetensors``) and their record (``lora.json``) to ``out_dir``.

    ``base`` says which encoder they adapt (e.g. its source); the base's fingerprint is added.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().float().contiguous() for k, v in adapter_state(encoder).items()}
    if not tensors:
        raise ValueError("the encoder has no LoRA adapters to save")
    with atomic_path(out_dir / ADAPTERS_FILE) as temp:
        save_file(tensors, str(temp), metadata={"format": ADAPTERS_FORMAT})
    record = {
        "format": ADAPTERS_FORMAT,
        "format_version": ADAPTERS_FORMAT_VERSION,
        **settings.as_dict(),
        "parameters": sum(t.numel() for t in tensors.values()),
        "base": {**base, "sha256": base_fingerprint(encoder), "architecture": asdict(encoder.config)},
    }
    write_text(out_dir / ADAPTERS_RECORD, json.dumps(record, indent=2, sort_keys=True) + "\n")
    return out_dir


def load_adapters(encoder: ViTEncoder3D, folder: str | Path) -> LoRA:
    """Give ``encoder`` the adapters saved in ``folder`` (in place) and return their settings.

    Refused unless ``encoder`` is the base they were trained on (same fingerprint).
    """
    folder = Path(folder)
    record = json.loads((folder / ADAPTERS_RECORD).read_text())
    if record.get("format") != ADAPTERS_FORMAT or record.get("format_version", 0) > ADAPTERS_FORMAT_VERSION:
        raise ValueError(f"{folder / ADAPTERS_RECORD}: not an {ADAPTERS_FORMAT} record this ichor can read")
    expected, got = record["base"]["sha256"], base_fingerprint(encoder)
    if expected != got:
        raise ValueError(
            f"{folder}: the adapters belong to base encoder {record['base'].get('source', '?')} (sha256 {expected[:12]}), "
            f"not to this encoder (sha256 {got[:12]})"
        )
    settings = LoRA(**{k: record[k] for k in ("rank", "alpha", "dropout", "targets")})
    add_lora(encoder, settings)
    state = load_tensors(folder / ADAPTERS_FILE)
    expected_keys = set(adapter_state(encoder))
    if set(state) != expected_keys:
        raise ValueError(
            f"{folder / ADAPTERS_FILE}: adapter keys differ from the record's settings "
            f"(missing {sorted(expected_keys - set(state))[:3]}, unexpected {sorted(set(state) - expected_keys)[:3]})"
        )
    encoder.load_state_dict(state, strict=False)  # adapters only: the keys were checked above, the base by fingerprint
    return settings
