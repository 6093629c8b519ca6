"""Which checkpoints are complete.

The HF Trainer writes a checkpoint folder file by file; a process killed mid-save leaves a folder that looks
like a checkpoint but is missing files or holds a truncated `trainer_state.json`.  GFlowNetTrainer writes its own
state (`gfn_state_rank{r}.pt`) first and the Trainer writes `trainer_state.json` after the model, optimizer,
scheduler and RNG states, so a checkpoint is complete iff its `trainer_state.json` parses and the GFlowNet state
is there.  `resume_from_checkpoint=True` resumes from the newest complete one.
"""

from __future__ import annotations

import json
import os
import re

_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")


def is_complete_checkpoint(path: str) -> bool:
    try:
        with open(os.path.join(path, "trainer_state.json")) as f:
            json.load(f)
    except (OSError, ValueError):
        return False
    return os.path.exists(os.path.join(path, "gfn_state_rank0.pt"))


def last_complete_checkpoint(folder: str) -> str | None:
    """The newest complete `checkpoint-N` folder under `folder`, or None."""
    if not os.path.isdir(folder):
        return None
    steps = sorted(
        (int(m.group(1)), name) for name in os.listdir(folder) if (m := _CHECKPOINT.match(name))
    )
    for _, name in reversed(steps):
        path = os.path.join(folder, name)
        if os.path.isdir(path) and is_complete_checkpoint(path):
            return path
    return None
