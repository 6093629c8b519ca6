"""The reward: per-prefix log-rewards from a frozen causal LM, the one reward path of every trainer and evaluation.

For a latent Z = z_1..z_n and every prefix s_k = z_1..z_k (k = 0..n) we need log R(s_k ⊤), untempered:

* stop-token reward (no suffix):  log R(s_k ⊤) = log p(z_1..z_k ⊤ | reward_prompt)
* fixed-suffix reward (suffix Y): log R(s_k ⊤) = log p(z_1..z_k Y | reward_prompt)   (no stop-token term)

Both are computed on token ids, `reward_prompt + Z [+ Y]`, never by re-tokenising decoded text; these are the
rewards of Hu et al. (ICLR 2024) and, at every prefix, what the modified sub-trajectory balance loss
reads.  Values are natural logs, float32, untempered (a trainer divides by its reward temperature).

The passes are packed (`gfn_trl.rewards.packed`) where that is exact for the reward LM
(`gfn_trl.rewards.capability`), else ordinary (`gfn_trl.rewards.reference`), with a warning.

Dimension legend: B rows, T latent width, S = T + 1 states (prefix lengths k = 0..T).
"""

from __future__ import annotations

import warnings
from contextlib import nullcontext

import torch
from torch import Tensor

from .capability import _packing_obstacle, _sliding_window
from .packed import _packed_log_rewards_sets
from .reference import _plain_log_rewards_sets


def prefix_log_rewards(
    model,
    prompt_ids: list[list[int]],
    z: Tensor,
    lengths: Tensor,
    stop_token_id: int,
    pad_token_id: int,
    suffix_ids: list[list[int]] | None = None,
    chunk_size: int | None = None,
) -> Tensor:
    """(B, S) untempered per-prefix log-rewards, of the stop-token kind if `suffix_ids` is None, else fixed-suffix.

    Rows are scored `chunk_size` at a time to bound the memory of the pass; identical rows are scored once, and
    rows of a chunk that share a prompt share its computation.

    Args:
        model: the frozen reward LM (a transformers causal LM, or a PEFT wrapper whose adapter the caller disabled).
        prompt_ids: per row, the reward prompt's token ids (at least one).
        z, lengths: (B, T) latents right-padded (any pad), (B,) their lengths n <= T.
        stop_token_id, pad_token_id: the stop action ⊤ (scored only without a suffix) and the padding id.
        suffix_ids: per row, the suffix Y's token ids (at least one each), or None for the stop-token reward.
        chunk_size: rows per pass (None: all at once).

    Returns:
        (B, S) float32 natural-log log R(s_k ⊤) at k = 0..T, untempered; 0 past each row's length.

    Raises:
        ValueError: an empty reward prompt, or an empty suffix.
    """
    return _prefix_log_rewards_sets(model, prompt_ids, z, lengths, stop_token_id, pad_token_id, [suffix_ids],
                                    chunk_size)[0]


def final_log_rewards(
    model,
    prompt_ids: list[list[int]],
    z: Tensor,
    lengths: Tensor,
    stop_token_id: int,
    pad_token_id: int,
    suffix_ids: list[list[int]] | None = None,
    chunk_size: int | None = None,
) -> Tensor:
    """(B,) float32 untempered log R(Z ⊤) of the finished latents only: what a reward maximiser (GRPO, RLOO, PPO)
    needs.

    Equal to `prefix_log_rewards(...)` at k = n (same arguments), at the cost of one suffix copy per row instead of
    n + 1.

    Raises:
        ValueError: an empty reward prompt, or an empty suffix.
    """
    log_r = _prefix_log_rewards_sets(model, prompt_ids, z, lengths, stop_token_id, pad_token_id, [suffix_ids],
                                     chunk_size, final_only=True)[0]
    return log_r.gather(1, lengths[:, None]).squeeze(1)


@torch.no_grad()
def _prefix_log_rewards_sets(
    model, prompt_ids: list[list[int]], z: Tensor, lengths: Tensor, stop_token_id: int, pad_token_id: int,
    suffix_sets: list[list[list[int]] | None], chunk_size: int | None = None, final_only: bool = False,
) -> list[Tensor]:
    """`prefix_log_rewards` for several suffix sets (None: the stop token) at once, sharing the passes over the
    prompts and the latents.  With `final_only`, only the values at k = n are meaningful."""
    device = z.device
    for suffixes in suffix_sets:
        if suffixes is not None and any(len(s) == 0 for s in suffixes):
            raise ValueError("An empty suffix: a fixed-suffix reward needs at least one suffix token.")
    if any(len(p) == 0 for p in prompt_ids):
        raise ValueError("An empty reward prompt: the reward LM needs at least one token to condition on.")
    # identical rows (same prompt, latent and suffixes: frequent among the samples of a trained policy) once
    n_list = lengths.tolist()
    z_list = z.tolist()
    keys = [(tuple(prompt_ids[b]), tuple(z_list[b][: n_list[b]]),
             tuple(None if s is None else tuple(s[b]) for s in suffix_sets)) for b in range(len(n_list))]
    order: dict[tuple, int] = {}  # row key -> index among the distinct rows
    keep, inverse = [], []
    for b, key in enumerate(keys):
        if key not in order:
            order[key] = len(keep)
            keep.append(b)
        inverse.append(order[key])
    if len(keep) < len(keys):
        sub = _prefix_log_rewards_sets(
            model, [prompt_ids[b] for b in keep], z[keep], lengths[keep], stop_token_id, pad_token_id,
            [None if s is None else [s[b] for b in keep] for s in suffix_sets], chunk_size, final_only)
        index = torch.tensor(inverse, device=device)
        return [r[index] for r in sub]

    window = _sliding_window(model)
    span = max(map(len, prompt_ids)) + z.shape[1] + max(max(map(len, s)) if s else 1 for s in suffix_sets)
    obstacle = _packing_obstacle(model)
    if window is not None and span > window:  # the packed masks do not apply sliding windows
        obstacle = f"sequences of up to {span} tokens exceed the reward LM's sliding window ({window})"
    if obstacle is not None:
        warnings.warn(f"Packed rewards would not be exact: {obstacle}. The rewards use ordinary forward passes "
                      "instead: one for the stop-token reward, one per prefix with a fixed suffix (slower).",
                      stacklevel=3)

    # ordinary left-padded sequences, which the model masks itself, are exact; else the packed passes
    score_chunk = _plain_log_rewards_sets if obstacle is not None else _packed_log_rewards_sets
    B = z.shape[0]
    chunk_size = chunk_size or B
    parts: list[list[Tensor]] = [[] for _ in suffix_sets]
    for lo in range(0, B, chunk_size):
        hi = min(B, lo + chunk_size)
        out = score_chunk(model, prompt_ids[lo:hi], z[lo:hi], lengths[lo:hi], stop_token_id, pad_token_id,
                          [None if s is None else s[lo:hi] for s in suffix_sets], final_only)
        for i, r in enumerate(out):
            parts[i].append(r)
    return [torch.cat(p, 0) for p in parts]


class LikelihoodReward:
    """log R(s_k ⊤) for every prefix, from the frozen reward LM: the one reward path of every trainer and evaluation.

    Args:
        policy: the policy model.  With no `reward_model` it must be a PEFT model: the reward is then its base
            with the adapter disabled (no second copy of the weights).
        reward_model: a separate frozen LM sharing the tokenizer.
        stop_token_id, pad_token_id: ids of the stop action and of padding.
        chunk_size: rows scored at once (bounds the memory of the logits).
        autocast: optional context-manager factory for mixed precision (e.g. `accelerator.autocast`).
        contrast_penalty: added to log R(s_k ⊤) (untempered) when a row's `contrast_suffix` is more likely than
            its suffix after s_k (by more than the row's `contrast_margin`, if it has one: the penalty applies when
            log p(contrast | s_k) + contrast_margin > log p(suffix | s_k); a calibrated judge, e.g. subjectivity's).

    Rows are those of `gfn_trl.data.tokenize_dataset`: `reward_prompt_ids`, `gfn_has_suffix`, `suffix_ids` and
    optionally `contrast_suffix_ids`.  Every value is a natural log, float32, untempered.

    Raises:
        ValueError: at construction, no `reward_model` and a policy without an adapter to disable; when scoring, an
            empty reward prompt or suffix.
    """

    def __init__(
        self, policy, reward_model, stop_token_id: int, pad_token_id: int, chunk_size=None, autocast=None,
        contrast_penalty: float = -50.0,
    ):
        if reward_model is None and not hasattr(policy, "disable_adapter"):
            raise ValueError("Without a PEFT adapter to disable, pass a separate frozen reward_model.")
        self.policy, self.reward_model = policy, reward_model
        self.stop_token_id, self.pad_token_id, self.chunk_size = stop_token_id, pad_token_id, chunk_size
        self.autocast = autocast or nullcontext
        self.contrast_penalty = contrast_penalty

    @property
    def device(self):
        model = self.reward_model if self.reward_model is not None else self.policy
        return next(model.parameters()).device

    def scorer(self):
        """(model, context) that computes the reward: the separate model, or the policy with its adapter off."""
        if self.reward_model is not None:
            return self.reward_model, nullcontext()
        return self.policy, self.policy.disable_adapter()

    @torch.no_grad()
    def __call__(self, rows: list[dict], z: Tensor, lengths: Tensor) -> Tensor:
        """(B, S) untempered per-prefix log-rewards for the latents `z` of tokenized `rows` (one row per latent)."""
        return self._score(rows, z, lengths, final_only=False)

    @torch.no_grad()
    def final(self, rows: list[dict], z: Tensor, lengths: Tensor) -> Tensor:
        """(B,) untempered log R(Z ⊤) of the finished latents only (`__call__` at k = n, for reward maximisers)."""
        return self._score(rows, z, lengths, final_only=True).gather(1, lengths[:, None]).squeeze(1)

    def _score(self, rows: list[dict], z: Tensor, lengths: Tensor, final_only: bool) -> Tensor:
        model, ctx = self.scorer()
        was_training = model.training
        model.eval()
        suffixes = [r["suffix_ids"] for r in rows] if rows[0]["gfn_has_suffix"] else None
        contrasts = [r.get("contrast_suffix_ids") or [] for r in rows]
        prompts = [r["reward_prompt_ids"] for r in rows]
        contrast = suffixes is not None and any(contrasts)
        suffix_sets = [suffixes] + ([[c or s for c, s in zip(contrasts, suffixes)]] if contrast else [])
        with ctx, self.autocast():
            # with a contrast suffix, both suffixes share the passes over the prompts and the latents
            log_r, *wrong = _prefix_log_rewards_sets(
                model, prompts, z, lengths, self.stop_token_id, self.pad_token_id, suffix_sets, self.chunk_size,
                final_only,
            )
            if contrast:
                # the paper's wrong-label penalty: a prefix after which the LM prefers the wrong suffix is penalised
                has = torch.tensor([bool(c) for c in contrasts], device=log_r.device)[:, None]
                margin = torch.tensor([float(r.get("contrast_margin") or 0.0) for r in rows], device=log_r.device)
                log_r = log_r + self.contrast_penalty * ((wrong[0] + margin[:, None].to(wrong[0].dtype) > log_r) & has)
        model.train(was_training)
        return log_r.float()
