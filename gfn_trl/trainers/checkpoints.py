"""Checkpoints that are what they claim: complete, verified, of this run, never a mix of two runs.

A gfn_trl checkpoint (`RolloutTrainer._save_checkpoint`, for the GFlowNet and PPO trainers alike) is written in a
staging folder (`.staging-checkpoint-N`) and renamed to `checkpoint-N` only once every file is there, so a process
killed while saving leaves no `checkpoint-N` at all (a staging folder is removed by the next run).  The last file
written before the rename is `gfn_manifest.json`:

* `files`: every file of the checkpoint with its size and SHA-256;
* `resumable`: whether the optimizer, scheduler and RNG states were saved (not with `save_only_model=True`);
* `fingerprint`: what the run was (architecture, vocabulary, a hash of the base weights, heads, loss and log-Z
  mode, LoRA settings, number of processes), which a resume must match;
* `fixed_settings`: the settings that live in the optimizer's or scheduler's state (learning rates, weight decay,
  Adam's constants), which a resume cannot change.

A checkpoint is complete iff its manifest parses, is resumable, and every file it lists is present with its size
and checksum.  `resume_from_checkpoint=True` takes the newest complete `checkpoint-N` and warns about each newer one
it skips, naming the missing or broken file.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from collections.abc import Callable

MANIFEST_NAME = "gfn_manifest.json"
STAGING_PREFIX = ".staging-"
MANIFEST_VERSION = 1
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")


def file_sha256(path: str, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _fsync_dir(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _list_files(folder: str) -> list[str]:
    out = []
    for root, _, files in os.walk(folder):
        for name in files:
            rel = os.path.relpath(os.path.join(root, name), folder)
            if rel != MANIFEST_NAME:
                out.append(rel)
    return sorted(out)


def write_manifest(folder: str, fingerprint: dict | None = None, fixed_settings: dict | None = None,
                   resumable: bool = True) -> dict:
    """Write `gfn_manifest.json` listing every file now in `folder` (size, SHA-256); atomically, last."""
    files = {}
    for rel in _list_files(folder):
        path = os.path.join(folder, rel)
        with open(path, "rb") as f:  # the data must be on disk before the manifest vouches for it
            os.fsync(f.fileno())
        files[rel] = {"size": os.path.getsize(path), "sha256": file_sha256(path)}
    manifest = {"version": MANIFEST_VERSION, "resumable": resumable, "files": files,
                "fingerprint": fingerprint or {}, "fixed_settings": fixed_settings or {}}
    tmp = os.path.join(folder, MANIFEST_NAME + ".tmp")
    with open(tmp, "w") as f:
        json.dump(manifest, f, indent=1, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, os.path.join(folder, MANIFEST_NAME))
    _fsync_dir(folder)
    return manifest


def read_manifest(path: str) -> dict:
    with open(os.path.join(path, MANIFEST_NAME)) as f:
        return json.load(f)


def checkpoint_folders(folder: str) -> list[str]:
    """The `checkpoint-N` folders directly under `folder`, oldest (lowest N) first."""
    if not os.path.isdir(folder):
        return []
    steps = sorted((int(m.group(1)), name) for name in os.listdir(folder) if (m := _CHECKPOINT.match(name)))
    return [os.path.join(folder, name) for _, name in steps if os.path.isdir(os.path.join(folder, name))]


def checkpoint_problem(path: str, verify_checksums: bool = True) -> str | None:
    """Why `path` is not a checkpoint a run can resume from (a sentence naming the file), or None if it is one."""
    if not os.path.exists(path):
        return f"{path} does not exist"
    if not os.path.isdir(path):
        return f"{path} is not a folder"
    manifest_path = os.path.join(path, MANIFEST_NAME)
    if not os.path.exists(manifest_path):
        inside = checkpoint_folders(path)
        if inside:
            return (f"{path} is an output directory, not a checkpoint (it holds {os.path.basename(inside[-1])}): pass "
                    f"{os.path.join(path, 'checkpoint-N')} or resume_from_checkpoint=True")
        return (f"{path} has no {MANIFEST_NAME}: it is not a checkpoint written by gfn_trl (or by a version before "
                "manifests); an interrupted save leaves no checkpoint-N folder at all")
    try:
        manifest = read_manifest(path)
        files = manifest["files"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        return f"{manifest_path} is unreadable ({type(e).__name__}: {e})"
    if not manifest.get("resumable", False):
        return (f"{path} was saved with save_only_model=True: it holds no optimizer.pt, scheduler.pt or RNG state, "
                "so training cannot resume from it exactly (start a new run with its weights as the model instead)")
    for rel, meta in files.items():
        file = os.path.join(path, rel)
        if not os.path.isfile(file):
            return f"{file} is missing"
        size = os.path.getsize(file)
        if size != meta["size"]:
            return f"{file} is truncated or changed ({size} bytes, the manifest says {meta['size']})"
    if verify_checksums:
        for rel, meta in files.items():
            file = os.path.join(path, rel)
            if file_sha256(file) != meta["sha256"]:
                return f"{file} is corrupt (its SHA-256 differs from the manifest's)"
    return None


def is_complete_checkpoint(path: str) -> bool:
    return checkpoint_problem(path) is None


def last_complete_checkpoint(folder: str, warn: Callable[[str], None] | None = None) -> str | None:
    """The newest complete `checkpoint-N` folder under `folder`, or None; `warn` is told why each newer one is not."""
    for path in reversed(checkpoint_folders(folder)):
        problem = checkpoint_problem(path)
        if problem is None:
            return path
        if warn is not None:
            warn(f"Skipping {path}: {problem}.")
    return None


def fingerprint_differences(saved: dict, current: dict) -> list[str]:
    """'key: checkpoint X, this run Y' for each entry of the two fingerprints that differs."""
    return [f"{k}: checkpoint {saved.get(k)!r}, this run {current.get(k)!r}"
            for k in sorted(set(saved) | set(current)) if saved.get(k) != current.get(k)]


def staging_folder(final: str) -> str:
    return os.path.join(os.path.dirname(final), STAGING_PREFIX + os.path.basename(final))


def publish(staging: str, final: str) -> None:
    """Rename the finished `staging` folder to `final`.  A `final` already there (a checkpoint of the same step that
    is being re-saved after a resume, or an old run's with `overwrite_output_dir`) is moved aside first and then
    deleted, so that `final` is at every moment absent, the old folder or the new one, never a mix."""
    old = None
    if os.path.exists(final):
        old = staging + ".old"
        if os.path.exists(old):
            shutil.rmtree(old)
        os.replace(final, old)
    os.replace(staging, final)
    _fsync_dir(os.path.dirname(final))
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def remove_stale_staging(folder: str) -> list[str]:
    """Delete the staging folders that interrupted saves left in `folder`; returns their paths."""
    if not os.path.isdir(folder):
        return []
    removed = []
    for name in os.listdir(folder):
        if name.startswith(STAGING_PREFIX + "checkpoint-"):
            shutil.rmtree(os.path.join(folder, name), ignore_errors=True)
            removed.append(os.path.join(folder, name))
    return removed
