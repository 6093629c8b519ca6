"""Per-prefix log-rewards from a frozen causal LM.

For a latent Z = z_1..z_n and every prefix s_k = z_1..z_k (k = 0..n) we need log R(s_k ⊤), untempered:

* stop-token reward (no suffix):  log R(s_k ⊤) = log p(z_1..z_k ⊤ | reward_prompt)
* fixed-suffix reward (suffix Y): log R(s_k ⊤) = log p(z_1..z_k Y | reward_prompt)   (no stop-token term)

Both are computed on token ids, `reward_prompt + Z [+ Y]`, never by re-tokenising decoded text.

The stop-token reward needs one forward pass.  The fixed-suffix reward naively needs n + 1 passes (one per
prefix).  `packed=True` does it in ONE pass over the layout

    [reward_prompt][z_1 .. z_T][Y (copy 0)][Y (copy 1)] ... [Y (copy T)]

with a 4-D attention mask in which copy k of Y sees the prompt, z_1..z_k and its own earlier tokens, and
position ids that continue from z_k.  That is the same computation as the naive loop, packed
(test_rewards.py proves they agree).

Dimension legend: B rows, P prompt width, T latent width, S = T + 1 states, W suffix width, L layout length.
"""

from __future__ import annotations

import torch
from torch import Tensor

from contextlib import nullcontext

from .sampling import left_pad, position_ids_from_mask, right_pad


def _token_log_probs(logits: Tensor, targets: Tensor, lse: Tensor | None = None) -> Tensor:
    """log softmax(logits)[targets] without materialising the full log-softmax: (..., V), (...) -> (...).

    `lse` (...), the logits' logsumexp, may be passed when several targets are read from the same logits."""
    logits = logits.float()
    if lse is None:
        lse = torch.logsumexp(logits, dim=-1)
    return logits.gather(-1, targets[..., None]).squeeze(-1) - lse


def _latent_terms(logits_states: Tensor, z: Tensor, lengths: Tensor, lse: Tensor) -> Tensor:
    """(B, S) Σ_{k<=i} log p(z_k | s_{k-1}) from the (B, S, V) logits at the states and their (B, S) logsumexp."""
    T = z.shape[1]
    if T == 0:
        return logits_states.new_zeros(z.shape[0], 1, dtype=torch.float32)
    lp = _token_log_probs(logits_states[:, :T], z, lse[:, :T])  # (B, T)
    taken = torch.arange(1, T + 1, device=z.device)[None, :] <= lengths[:, None]
    lp = torch.where(taken, lp, torch.zeros_like(lp))
    return torch.cat([lp.new_zeros(z.shape[0], 1), lp.cumsum(1)], dim=1)  # (B, S)


def _mask_states(log_r: Tensor, lengths: Tensor) -> Tensor:
    """States past each row's length get 0 (they are never used)."""
    S = log_r.shape[1]
    past = torch.arange(S, device=log_r.device)[None, :] > lengths[:, None]
    return log_r.masked_fill(past, 0.0)


@torch.no_grad()
def stop_token_log_rewards(
    model, prompt_ids: Tensor, prompt_mask: Tensor, z: Tensor, lengths: Tensor, stop_token_id: int
) -> Tensor:
    """(B, S) untempered log p(z_1..z_k ⊤ | prompt) for every k, in one forward pass."""
    T = z.shape[1]
    ids = torch.cat([prompt_ids, z], 1)
    mask = torch.cat([prompt_mask, torch.ones_like(z)], 1)
    logits = model(
        input_ids=ids, attention_mask=mask, position_ids=position_ids_from_mask(mask), logits_to_keep=T + 1, use_cache=False
    ).logits[:, -(T + 1) :]  # (B, S, V)
    lse = torch.logsumexp(logits.float(), dim=-1)  # (B, S), shared by the latent and the stop terms
    stop = _token_log_probs(logits, torch.full(logits.shape[:2], stop_token_id, device=z.device), lse)  # (B, S)
    return _mask_states(_latent_terms(logits, z, lengths, lse) + stop, lengths)


def packed_layout(P: int, T: int, W: int, device=None) -> tuple[Tensor, Tensor, Tensor]:
    """Structure of the packed layout, shared by every row.

    Returns:
        allowed: (L, L) bool, query attends key (ignoring padding)
        block:   (L,) -1 for prompt and latent positions, k for the k-th copy of Y
        offset:  (L,) position id offset relative to the end of the real prompt
    """
    L = P + T + (T + 1) * W
    pos = torch.arange(L, device=device)
    block = torch.full((L,), -1, dtype=torch.long, device=device)
    block[P + T :] = torch.arange(T + 1, device=device).repeat_interleave(W)
    z_index = torch.zeros(L, dtype=torch.long, device=device)  # i for z_i (1-based), 0 for the prompt
    z_index[P : P + T] = torch.arange(1, T + 1, device=device)
    tok = torch.zeros(L, dtype=torch.long, device=device)  # index inside a copy of Y
    tok[P + T :] = torch.arange(W, device=device).repeat(T + 1)
    q, k = pos[:, None], pos[None, :]
    bq, bk = block[:, None], block[None, :]
    causal_prefix = (bq == -1) & (k <= q)  # prompt/latent queries: ordinary causal attention
    sees_prefix = (bq >= 0) & (bk == -1) & (z_index[None, :] <= bq)  # copy k sees prompt + z_1..z_k
    sees_own_copy = (bq >= 0) & (bk == bq) & (k <= q)
    allowed = causal_prefix | sees_prefix | sees_own_copy
    # position ids relative to the first latent position: z_i -> i - 1, copy k token t -> k + t
    offset = torch.where(block >= 0, block + tok, z_index - 1)
    return allowed, block, offset


@torch.no_grad()
def suffix_log_rewards_packed(
    model,
    prompt_ids: Tensor,
    prompt_mask: Tensor,
    z: Tensor,
    lengths: Tensor,
    suffix_ids: Tensor,
    suffix_lengths: Tensor,
) -> Tensor:
    """(B, S) untempered log p(z_1..z_k Y | prompt) for every k, in one forward pass (see module docstring)."""
    B, P = prompt_ids.shape
    T, W = z.shape[1], suffix_ids.shape[1]
    device = z.device
    allowed, block, offset = packed_layout(P, T, W, device)
    L = allowed.shape[0]
    ids = torch.cat([prompt_ids, z, suffix_ids.repeat(1, T + 1)], 1)  # (B, L)
    in_suffix = torch.arange(W, device=device)[None, :] < suffix_lengths[:, None]  # (B, W)
    key_valid = torch.cat([prompt_mask.bool(), torch.ones_like(z, dtype=torch.bool), in_suffix.repeat(1, T + 1)], 1)
    eye = torch.eye(L, dtype=torch.bool, device=device)
    attend = (allowed[None] & key_valid[:, None, :]) | eye[None]  # (B, L, L); the diagonal keeps pad rows finite
    dtype = next(model.parameters()).dtype
    mask4d = torch.zeros(B, 1, L, L, dtype=dtype, device=device).masked_fill(~attend[:, None], torch.finfo(dtype).min)
    prompt_len = prompt_mask.sum(1, keepdim=True)  # (B, 1)
    position_ids = torch.cat([position_ids_from_mask(prompt_mask), (prompt_len + offset[None, P:]).expand(B, -1)], 1)
    logits = model(
        input_ids=ids, attention_mask=mask4d, position_ids=position_ids, logits_to_keep=L - P + 1, use_cache=False
    ).logits  # (B, L - P + 1, V): positions P-1 .. L-1
    states = logits[:, : T + 1]  # (B, S, V): next-token logits after the prompt and after each z_k
    lse = torch.logsumexp(states.float(), dim=-1)  # (B, S), shared by the latent and first-suffix terms
    latent = _latent_terms(states, z, lengths, lse)  # (B, S)
    first = _token_log_probs(states, suffix_ids[:, :1].expand(B, T + 1), lse)  # (B, S): log p(y_1 | s_k)
    # inside copy k, the token at index t predicts y_{t+1}
    copies = logits[:, T + 1 :].reshape(B, T + 1, W, -1)[:, :, : W - 1]  # (B, S, W-1, V)
    rest = _token_log_probs(copies, suffix_ids[:, None, 1:].expand(B, T + 1, W - 1))  # (B, S, W-1)
    rest = torch.where(in_suffix[:, None, 1:], rest, torch.zeros_like(rest)).sum(-1)  # (B, S)
    return _mask_states(latent + first + rest, lengths)


@torch.no_grad()
def suffix_log_rewards_naive(
    model,
    prompt_ids: list[list[int]],
    z: Tensor,
    lengths: Tensor,
    suffix_ids: list[list[int]],
    pad_token_id: int,
) -> Tensor:
    """Reference implementation: one forward pass per prefix length k (n + 1 passes).  (B, S) untempered."""
    B, T = z.shape
    device = z.device
    out = torch.zeros(B, T + 1, device=device)
    for k in range(T + 1):
        rows = [prompt_ids[b] + z[b, :k].tolist() + suffix_ids[b] for b in range(B)]
        ids, mask = left_pad(rows, pad_token_id, device)
        logits = model(input_ids=ids, attention_mask=mask, position_ids=position_ids_from_mask(mask), use_cache=False).logits
        lp = _token_log_probs(logits[:, :-1], ids[:, 1:])  # (B, L-1): log p(token t+1 | ..t)
        width = ids.shape[1]
        for b in range(B):
            n_scored = k + len(suffix_ids[b])  # the latent prefix and the suffix
            out[b, k] = lp[b, width - 1 - n_scored :].sum()
    return _mask_states(out, lengths)


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

    Rows are scored `chunk_size` at a time to bound the memory of the logits.
    """
    B = z.shape[0]
    chunk_size = chunk_size or B
    device = z.device
    parts = []
    for lo in range(0, B, chunk_size):
        hi = min(B, lo + chunk_size)
        p_ids, p_mask = left_pad(prompt_ids[lo:hi], pad_token_id, device)
        z_c, n_c = z[lo:hi], lengths[lo:hi]
        if suffix_ids is None:
            parts.append(stop_token_log_rewards(model, p_ids, p_mask, z_c, n_c, stop_token_id))
        else:
            s_ids, s_len = right_pad(suffix_ids[lo:hi], pad_token_id, device=device)
            parts.append(suffix_log_rewards_packed(model, p_ids, p_mask, z_c, n_c, s_ids, s_len))
    return torch.cat(parts, 0)


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
            its suffix after s_k.
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
        model, ctx = self.scorer()
        was_training = model.training
        model.eval()
        suffixes = [r["suffix_ids"] for r in rows] if rows[0]["gfn_has_suffix"] else None
        contrasts = [r.get("contrast_suffix_ids") or [] for r in rows]
        prompts = [r["reward_prompt_ids"] for r in rows]
        with ctx, self.autocast():
            log_r = prefix_log_rewards(
                model, prompts, z, lengths, self.stop_token_id, self.pad_token_id, suffixes, self.chunk_size
            )
            if suffixes is not None and any(contrasts):
                # the paper's wrong-label penalty: a prefix after which the LM prefers the wrong suffix is penalised
                wrong = prefix_log_rewards(
                    model, prompts, z, lengths, self.stop_token_id, self.pad_token_id,
                    [c or s for c, s in zip(contrasts, suffixes)], self.chunk_size,
                )
                has = torch.tensor([bool(c) for c in contrasts], device=log_r.device)[:, None]
                log_r = log_r + self.contrast_penalty * ((wrong > log_r) & has)
        model.train(was_training)
        return log_r.float()
