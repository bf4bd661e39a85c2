"""Downstream tasks on a pre-trained encoder: plugin heads, probing/fine-tuning, cross-validation, features."""

from ichor.downstream.plugins import GROUP, HeadError, TaskHead, head_arguments, installed_heads, resolve_head
from ichor.downstream.task import DownstreamTask
from ichor.downstream.writer import PredictionWriter

__all__ = [
    "GROUP",
    "DownstreamTask",
    "HeadError",
    "PredictionWriter",
    "TaskHead",
    "head_arguments",
    "installed_heads",
    "resolve_head",
]
