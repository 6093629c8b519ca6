"""Checks that turn a bad input into an early error naming it, at construction instead of mid-training.

Called by `RolloutTrainer.__init__`: the dataset's type, the output directory, the batch against the dataset,
the vocabulary mask, the tool (wrapped so that every answer is checked), and the fingerprint of the base weights
that a resumed run must match (`gfn_trl.checkpoints`).
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Sequence

import torch


def check_dataset_type(dataset, split: str) -> None:
    """gfn_trl tokenizes the data once and keys the replay buffer by row, so it needs a map-style `Dataset`."""
    if dataset is None:
        return
    try:
        from datasets import IterableDataset
    except ImportError:  # datasets is a dependency
        IterableDataset = ()
    if isinstance(dataset, IterableDataset) or not hasattr(dataset, "__len__"):
        raise TypeError(
            f"The {split} dataset is a {type(dataset).__name__}, which has no len(): gfn_trl tokenizes the rows once "
            "and keeps a replay buffer per row, so it needs a map-style datasets.Dataset. Convert it, e.g. "
            "Dataset.from_list(list(dataset.take(n)))."
        )


def check_output_dir_writable(output_dir: str) -> None:
    """Fail now, not at the first checkpoint after hours of training, if `output_dir` cannot be written."""
    try:
        os.makedirs(output_dir, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=output_dir, prefix=".gfn_write_test"):
            pass
    except OSError as e:
        raise PermissionError(
            f"output_dir {output_dir!r} is not writable ({type(e).__name__}: {e}); checkpoints and the model card go "
            "there. Pick a writable output_dir."
        ) from None


def check_batch_fits(args, dataset, split: str = "train") -> None:
    """With `dataloader_drop_last`, a global batch larger than the dataset yields no batch at all: zero steps."""
    if dataset is None or not getattr(args, "dataloader_drop_last", False):
        return
    batch = args.per_device_train_batch_size * max(1, args.world_size)
    if len(dataset) < batch:
        raise ValueError(
            f"dataloader_drop_last=True drops every batch: the {split} dataset has {len(dataset)} rows but a batch "
            f"takes {batch} (per_device_train_batch_size={args.per_device_train_batch_size} x {max(1, args.world_size)}"
            " processes), so training would take zero steps. Lower per_device_train_batch_size or set "
            "dataloader_drop_last=False."
        )


def resolve_vocab_mask(vocab_mask, tokenizer, model_vocab_size: int, stop_token_id: int,
                       min_length: int) -> torch.Tensor | None:
    """The (V,) bool mask of the tokens a latent may use, checked: bool dtype, one entry per token of the tokenizer
    (up to the model's padded vocabulary), and at least one token besides the stop token."""
    allowed = vocab_mask(tokenizer) if callable(vocab_mask) else vocab_mask
    if allowed is None:
        return None
    allowed = torch.as_tensor(allowed)
    if allowed.dtype != torch.bool:
        raise ValueError(
            f"vocab_mask must be a bool tensor (True: the token is allowed), got dtype {allowed.dtype}. To allow a "
            "list of token ids, build the mask: mask = torch.zeros(len(tokenizer), dtype=torch.bool); mask[ids] = True."
        )
    if allowed.ndim != 1:
        raise ValueError(f"vocab_mask must be a 1-D bool tensor over the vocabulary, got shape {tuple(allowed.shape)}.")
    n = allowed.shape[0]
    if not len(tokenizer) <= n <= max(model_vocab_size, len(tokenizer)):
        raise ValueError(
            f"vocab_mask has {n} entries but the tokenizer has {len(tokenizer)} tokens (and the model's output layer "
            f"{model_vocab_size}): give one entry per token, e.g. a mask of length len(tokenizer)."
        )
    if int(allowed.sum()) == 0:
        raise ValueError("vocab_mask allows no token; a latent could only be empty.")
    others = allowed.clone()
    others[stop_token_id] = False
    if int(others.sum()) == 0:
        raise ValueError(
            f"vocab_mask allows only the stop token (id {stop_token_id}): every latent would be empty"
            f"{' and min_completion_length=' + str(min_length) + ' could never be met' if min_length else ''}. "
            "Allow the tokens a latent may use."
        )
    return allowed


class CheckedTool:
    """A tool whose every answer is checked: `forced_tokens(latent)` must return len(latent) + 1 token ids in
    [-1, vocab_size).  A wrong-length answer would otherwise be broadcast over every state."""

    def __init__(self, tool, vocab_size: int):
        if not callable(getattr(tool, "forced_tokens", None)):
            raise TypeError(f"tool must have a forced_tokens(latent) -> list[int] method; {type(tool).__name__} has "
                            "none (see gfn_trl.tools).")
        self.tool, self.vocab_size = tool, vocab_size
        self.forced_tokens([])  # the empty latent: fail at construction if even that answer is malformed

    def forced_tokens(self, latent: Sequence[int]) -> list[int]:
        latent = list(latent)
        out = self.tool.forced_tokens(latent)
        try:
            out = [int(t) for t in out]
        except (TypeError, ValueError):
            raise ValueError(f"{type(self.tool).__name__}.forced_tokens({latent}) returned {out!r}, not a list of "
                             "token ids.") from None
        if len(out) != len(latent) + 1:
            raise ValueError(
                f"{type(self.tool).__name__}.forced_tokens({latent}) returned {len(out)} entries; it must return "
                f"len(latent) + 1 = {len(latent) + 1}: the token the tool appends at each state s_0 .. s_n, or -1."
            )
        bad = [t for t in out if not -1 <= t < self.vocab_size]
        if bad:
            raise ValueError(f"{type(self.tool).__name__}.forced_tokens({latent}) returned ids {bad} outside [-1, "
                             f"{self.vocab_size}).")
        return out

    def __getattr__(self, name):  # the wrapped tool's other methods (TextTool.tokenize, ...)
        return getattr(self.tool, name)


def checked_tool(tool, vocab_size: int):
    return None if tool is None else CheckedTool(tool, vocab_size)


def _normalised_name(name: str) -> str:
    """A parameter's name as in the bare model, whatever PEFT wrapping is around it."""
    while name.startswith("base_model.model."):
        name = name[len("base_model.model."):]
    return name.replace(".base_layer.", ".")


def base_fingerprint(model, tokenizer, stop_token_id: int) -> dict:
    """What a resumed run must share with the run that wrote the checkpoint: the architecture, the vocabulary and the
    base weights.  The weights' hash reads each tensor's name, shape, dtype and up to 1024 evenly spaced values (a
    different base model of the same shapes differs in every tensor), so it costs little even for large models."""
    digest = hashlib.sha256()
    for name, p in sorted(model.named_parameters(), key=lambda kv: kv[0]):
        if "lora_" in name or "modules_to_save" in name:
            continue
        digest.update(f"{_normalised_name(name)}:{tuple(p.shape)}:{p.dtype}".encode())
        flat = p.detach().reshape(-1)
        if flat.numel() and flat.device.type != "meta":
            step = max(1, flat.numel() // 1024)
            digest.update(flat[::step][:1024].float().cpu().numpy().tobytes())
    config = model.config
    vocab = hashlib.sha256(repr(sorted(tokenizer.get_vocab().items())).encode()).hexdigest()[:16]
    return {
        "architecture": f"{config.model_type} {list(getattr(config, 'architectures', None) or [])}",
        "vocabulary": f"{len(tokenizer)} tokens, sha256 {vocab}, stop token {stop_token_id}",
        "base_weights": digest.hexdigest()[:32],
    }


def nonfinite_gradients(named_parameters) -> list[str]:
    """Names of the parameters whose gradient holds NaN or ±inf."""
    named = [(n, p.grad) for n, p in named_parameters if p.grad is not None]
    if not named:
        return []
    ok = torch.stack([torch.isfinite(g).all() for _, g in named]).cpu()
    return [n for (n, _), good in zip(named, ok.tolist()) if not good]


def check_construction(args, train_dataset, eval_dataset) -> None:
    """What `RolloutTrainer.__init__` can check before loading anything: the datasets' type, the batch against the
    dataset, and that `output_dir` can be written."""
    check_dataset_type(train_dataset, "train")
    check_dataset_type(eval_dataset, "eval")
    check_batch_fits(args, train_dataset)
    check_output_dir_writable(args.output_dir)
