"""Moved to `gfn_trl.trainers.checkpoints`; kept so old imports work."""

from .trainers.checkpoints import (
    MANIFEST_NAME,
    MANIFEST_VERSION,
    STAGING_PREFIX,
    checkpoint_folders,
    checkpoint_problem,
    file_sha256,
    fingerprint_differences,
    is_complete_checkpoint,
    last_complete_checkpoint,
    publish,
    read_manifest,
    remove_stale_staging,
    staging_folder,
    write_manifest,
)

__all__ = [
    "MANIFEST_NAME", "MANIFEST_VERSION", "STAGING_PREFIX", "checkpoint_folders", "checkpoint_problem", "file_sha256",
    "fingerprint_differences", "is_complete_checkpoint", "last_complete_checkpoint", "publish", "read_manifest",
    "remove_stale_staging", "staging_folder", "write_manifest",
]
