"""Moved to `gfn_trl.trainers.zero3`; kept so old imports work."""

from .trainers.zero3 import gathered, is_partitioned

__all__ = ["gathered", "is_partitioned"]
