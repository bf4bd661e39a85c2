"""Why a task decided: occlusion attribution maps of a trained downstream task (``ichor explain``)."""

from ichor.explain.checkpoint import load_task
from ichor.explain.occlusion import occlusion
from ichor.explain.run import explain

__all__ = ["explain", "load_task", "occlusion"]
