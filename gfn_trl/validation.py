"""Moved to `gfn_trl.trainers.validation`; kept so old imports work."""

from .trainers.validation import (
    CheckedTool,
    base_fingerprint,
    check_batch_fits,
    check_construction,
    check_dataset_type,
    check_output_dir_writable,
    checked_tool,
    nonfinite_gradients,
    resolve_vocab_mask,
)

__all__ = [
    "CheckedTool", "base_fingerprint", "check_batch_fits", "check_construction", "check_dataset_type",
    "check_output_dir_writable", "checked_tool", "nonfinite_gradients", "resolve_vocab_mask",
]
