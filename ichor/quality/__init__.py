"""CBF quality measures computed from the map itself (no model): the QEI of Dolui et al. 2024."""

from ichor.quality.qei import QEIError, QEIResult, compute_qei

__all__ = ["QEIError", "QEIResult", "compute_qei"]
