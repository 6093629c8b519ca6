"""The packed-attention engine: every prefix's log-reward from a few shared passes of the frozen reward LM.

The fixed-suffix reward naively needs n + 1 passes (one per prefix: `gfn_trl.rewards.reference`).  The packed scorer
computes the same thing (test_rewards.py proves they agree with the naive loop) over one shared computation of the
prefix:

    A  each distinct reward prompt once (the k samples of a prompt share it), keeping its keys and values;
    Z  the latents z_1..z_T of every row, attending to their prompt's keys through a read-only cache; the output
       at the prompt's last token and at z_k is the state s_k, where log p(z_{k+1} | s_k), log p(y_1 | s_k)
       (or log p(⊤ | s_k)) are read;
    C  the copies of the suffix: copy k (k = 0..n, never past the latent's end) feeds y_1..y_{W-1} at the
       positions that follow z_k and attends to the prompt, z_1..z_k and itself, so its outputs give
       log p(y_{t+1} | s_k, y_1..y_t).  Several copies of a row share a row of the pass (`_copies_per_row`
       trades the copies' attention to each other against copying the prefix's keys).

A and Z are all the stop-token reward needs.  Where the prompt's cache cannot be shared (sliding-window caches)
one pass per row over [prompt][z_1..z_T][copy 0]..[copy T] with a 4-D attention mask does it instead.  Which LMs
this is exact for is decided in `gfn_trl.rewards.capability`; the others get `gfn_trl.rewards.reference`.
Three more things keep the pass cheap:

* the output layer runs only where a log-probability is read, on gathered hidden states, `_HEAD_CHUNK_ELEMENTS`
  logits at a time, so no (B, L, V) logits are built; an LM whose logits are not `head(last hidden state)`
  (Gemma-2's soft-capping, Cohere's `logit_scale`, ...) gets full logits instead (`_split_lm_head`);
* log-softmax is never materialised: one logsumexp per scored position and a gather;
* identical rows (same prompt, latent and suffix) are scored once (`gfn_trl.rewards.likelihood`).

Every log-probability is natural-log, float32 and untempered.

Dimension legend: B rows, U distinct prompts, P prompt width, T latent width, S = T + 1 states, W suffix width,
W1 = W - 1 tokens fed per copy, L2 = T + S W1 positions after the prompt, V vocabulary, H hidden size, X = H or V.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..models import cache_kwarg
from ..sampling import left_pad, position_ids_from_mask, right_pad
from .capability import _hf_model, _split_lm_head, _text_config
from .reference import _mask_states

try:  # the read-only prompt cache builds on transformers' dynamic cache (>= 5)
    from transformers.cache_utils import DynamicCache, DynamicLayer
except ImportError:  # pragma: no cover
    DynamicCache = DynamicLayer = None

# Logits computed at once by the output layer: 2^24 float32 values (64 MiB), e.g. 333 positions of a 50k vocabulary.
_HEAD_CHUNK_ELEMENTS = 2**24
# Keys (or values) of one layer held at once by the copies pass, which bounds its memory.  A GPU wants big passes;
# on a CPU passes of ~2k positions keep their activations in cache (measured 15-20 % faster than one big pass).
_KV_CHUNK_ELEMENTS = {"cpu": 2**20, "other": 2**25}


class _PrefixLayer(DynamicLayer if DynamicLayer is not None else object):
    """One layer of a read-only cache: the keys/values of R prefixes (R, h, Lp, d), served to the batch rows `rows`.

    `update` returns [the row's prefix, the new keys] and stores nothing (a pass over many positions would
    otherwise keep every layer's keys at once), except that with `record` it keeps that result: the prefix of
    the next pass."""

    def __init__(self, keys: Tensor, values: Tensor, rows: Tensor, record: bool = False):
        super().__init__()
        self.keys, self.values, self.rows, self.record = keys, values, rows, record
        self.device, self.is_initialized = keys.device, True
        self.recorded = None

    def update(self, key_states, value_states, *args, **kwargs):
        keys = torch.cat([self.keys[self.rows].to(key_states.dtype), key_states], dim=-2)
        values = torch.cat([self.values[self.rows].to(value_states.dtype), value_states], dim=-2)
        if self.record:
            self.recorded = (keys, values)
        return keys, values


def _prefix_cache(cache, rows: Tensor, record: bool = False):
    """A prompt pass's dynamic cache made read-only and indexed by row (its layers replaced in place), or None
    where its layers are not plain full-attention dynamic layers (sliding windows, static or hybrid caches: the
    caller then packs everything into one pass)."""
    if DynamicCache is None or type(cache) is not DynamicCache or not getattr(cache, "layers", None):
        return None
    if any(type(layer) is not DynamicLayer or layer.keys is None for layer in cache.layers):
        return None
    cache.layers = [_PrefixLayer(layer.keys, layer.values, rows, record) for layer in cache.layers]
    return cache


def _additive_mask(allowed: Tensor, dtype) -> Tensor:
    """(B, Q, K) bool -> (B, 1, Q, K) additive float mask, as every attention implementation accepts it."""
    return torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill(
        ~allowed, torch.finfo(dtype).min)[:, None]


class _Scorer:
    """Runs one frozen LM: hidden states then the output layer on chosen positions (`split`), or full logits."""

    def __init__(self, model):
        self.model, self.split = model, _split_lm_head(model)
        first = next(model.parameters())
        self.device, self.dtype = first.device, first.dtype
        fn = self.split[0].forward if self.split else _hf_model(model).forward
        self.cache_name = cache_kwarg(fn)

    def run(self, ids, mask4d, position_ids, keep: int, cache=None, keep_cache=False) -> tuple[Tensor, object]:
        """The last `keep` positions' (B, keep, H) hidden states (split) or (B, keep, V) logits, and the cache
        when `keep_cache`."""
        kw = dict(input_ids=ids, attention_mask=mask4d, position_ids=position_ids,
                  use_cache=keep_cache or cache is not None)
        if cache is not None:
            kw[self.cache_name] = cache
        if self.split:
            out = self.split[0](**kw)
            states = out.last_hidden_state[:, -keep:]
        else:
            out = self.model(**kw, logits_to_keep=keep)
            states = out.logits[:, -keep:]
        new_cache = None
        if keep_cache:
            new_cache = getattr(out, "cache", None)
            if new_cache is None:
                new_cache = getattr(out, "past_key_values", None)
        return states, new_cache

    def log_probs(self, states: Tensor, targets: Tensor) -> Tensor:
        """(N, X) hidden states or logits, (N, K) target ids -> (N, K) float32 log-probabilities."""
        if not self.split:
            logits = states.float()
            return logits.gather(-1, targets) - torch.logsumexp(logits, -1, keepdim=True)
        head = self.split[1]
        vocab = head.weight.shape[0]
        step = max(1, _HEAD_CHUNK_ELEMENTS // vocab)
        out = []
        for lo in range(0, states.shape[0], step):
            logits = head(states[lo : lo + step]).float()  # (n, V)
            out.append(logits.gather(-1, targets[lo : lo + step]) - torch.logsumexp(logits, -1, keepdim=True))
        return torch.cat(out) if out else states.new_zeros(0, targets.shape[1], dtype=torch.float32)


def _after_prompt_layout(T: int, W1: int, device) -> tuple[Tensor, Tensor]:
    """The positions after the prompt, shared by every row: z_1..z_T, then copies k = 0..T of y_1..y_{W1}.

    Returns:
        allowed: (L2, L2) bool, query attends key among these positions (every query also sees the prompt)
        offset:  (L2,) position id relative to the end of the row's prompt
    """
    L2 = T + (T + 1) * W1
    pos = torch.arange(L2, device=device)
    block = torch.full((L2,), -1, dtype=torch.long, device=device)  # -1 for z, k for copy k
    block[T:] = torch.arange(T + 1, device=device).repeat_interleave(W1)
    tok = torch.zeros(L2, dtype=torch.long, device=device)  # index inside a copy
    tok[T:] = torch.arange(W1, device=device).repeat(T + 1)
    q, k = pos[:, None], pos[None, :]
    bq, bk = block[:, None], block[None, :]
    z_causal = (bq == -1) & (bk == -1) & (k <= q)
    copy_sees_prefix = (bq >= 0) & (bk == -1) & (k < bq)  # copy k sees z_1..z_k (z_j sits at index j - 1)
    copy_causal = (bq >= 0) & (bk == bq) & (k <= q)
    offset = torch.where(block >= 0, block + tok, pos)
    return z_causal | copy_sees_prefix | copy_causal, offset


def _copies_per_row(live_states: Tensor, prefix_len: int, W1: int, hidden: int) -> int:
    """How many copies of the suffix share one row of the copies pass.

    One copy per row skips every dead copy (k > n) and gives the cheapest attention (a copy sees its prefix and
    itself, not the other copies), but copies the prefix's keys into every row; all copies in one row is the
    reverse.  Cost per row in units of one position through the linear layers (24 H^2 flops per layer):
    C W1 (1 + keys / 6H) for the positions and their attention, plus about 12 (P + T) / H for the copied keys
    (a copied value costs ~70 flops' time on memory-bound hardware).  The minimum is taken over C = 1..S.
    """
    live = live_states.tolist()
    best, best_cost = 1, float("inf")
    for C in range(1, max(live) + 1):
        rows = sum(-(-n // C) for n in live)
        cost = rows * (C * W1 * (1 + (prefix_len + C * W1) / (6 * hidden)) + 12 * prefix_len / hidden)
        if cost < best_cost:
            best, best_cost = C, cost
    return best


def _copies_passes(scorer, cache, prefix, fed, rows, key_ok, prompt_len, lengths, first, rest, rest_len, dtype, acc):
    """The suffix copies k = first..n of every row b, C to a row of the pass: row (b, k0) holds copies k0..k0+C-1,
    reads row b's keys of [prompt z] (z_j visible to copy k iff j <= k) and its own copies (each sees itself,
    causally).  Rows are chunked so that one layer's keys for a chunk hold at most `_KV_CHUNK_ELEMENTS` values.

    Args:
        prefix: per layer, (B, h, P + T, d) keys and values of [prompt z].
        fed: (B, W1) the tokens fed in each copy (y_1..y_{W-1}); rest, rest_len: what they predict.
        first: (B,) the first copy of each row (0, or n for the final state only).
        acc: (B, S) receives Σ_t log p(rest_t | s_k, y_1, rest_<t) at the copies (b, k), first_b <= k <= n_b.
    """
    device = fed.device
    B, W1 = fed.shape
    P = key_ok.shape[1]
    T = prefix[0][0].shape[-2] - P
    hidden = getattr(_text_config(scorer.model), "hidden_size", None) or prefix[0][0].shape[1] * prefix[0][0].shape[-1]
    count = lengths - first + 1  # copies of row b
    C = _copies_per_row(count, P + T, W1, hidden)
    groups = torch.div(count + C - 1, C, rounding_mode="floor")  # rows of the pass for row b
    b_all = torch.arange(B, device=device).repeat_interleave(groups)  # (R,)
    k0_all = first[b_all] + (torch.arange(b_all.shape[0], device=device) - (groups.cumsum(0) - groups)[b_all]) * C
    copy = torch.arange(C, device=device).repeat_interleave(W1)  # (C W1,) copy index of each position
    tok = torch.arange(W1, device=device).repeat(C)  # (C W1,) token index inside its copy
    own = (copy[:, None] == copy[None, :]) & (tok[None, :] <= tok[:, None])  # (C W1, C W1)
    per_row = max(keys[0].numel() for keys, _ in prefix) // (P + T) * (P + T + C * W1)
    budget = _KV_CHUNK_ELEMENTS["cpu" if device.type == "cpu" else "other"]
    step = max(1, budget // per_row)
    for lo in range(0, b_all.shape[0], step):
        b, k0 = b_all[lo : lo + step], k0_all[lo : lo + step]
        n = b.shape[0]
        k = k0[:, None] + copy[None, :]  # (n, C W1) copy index k of every query
        cache.layers = [_PrefixLayer(keys, values, b) for keys, values in prefix]
        sees_z = torch.arange(T, device=device)[None, None, :] < k[:, :, None]  # (n, C W1, T)
        mask = torch.cat([key_ok[rows[b]][:, None, :].expand(n, C * W1, P), sees_z, own[None].expand(n, -1, -1)], 2)
        out, _ = scorer.run(fed[b].repeat(1, C), _additive_mask(mask, dtype), prompt_len[rows[b]][:, None] + k + tok,
                            keep=C * W1, cache=cache)
        out = out.reshape(n, C, W1, out.shape[-1])
        kk = k0[:, None] + torch.arange(C, device=device)[None, :]  # (n, C)
        is_live = kk <= lengths[b][:, None]
        _score_copies(scorer, out[is_live], b[:, None].expand(n, C)[is_live], kk[is_live], rest, rest_len, acc)


@torch.no_grad()
def _packed_log_rewards(
    model, prompt_ids: Tensor, prompt_mask: Tensor, rows: Tensor | None, z: Tensor, lengths: Tensor,
    targets: list[tuple[Tensor, Tensor, Tensor]], final_only: bool = False,
) -> list[Tensor]:
    """For each target set (end, rest, rest_lengths), the (B, S) per-prefix log-rewards

        Σ_{j<=k} log p(z_j | s_{j-1}) + log p(end | s_k) + Σ_t log p(rest_t | s_k, end, rest_<t)     for every k.

    Args:
        prompt_ids, prompt_mask: (U, P) left-padded prompts; `rows` (B,) maps each row to its prompt (None: U = B).
        z, lengths: (B, T) latents right-padded, (B,) their lengths.
        targets: per target set, end (B,) the token scored at every state (the stop token, or y_1), and rest,
            rest_lengths (B, W1), (B,) the right-padded tokens scored after it (y_2..y_W; W1 = 0 for the stop
            reward).  The sets share the passes over the prompt and the latents.
        final_only: only the value at k = n is needed (the other states' suffix copies are skipped; their values
            are then meaningless).

    Returns:
        per target set, (B, S) float32 natural-log values, untempered; 0 past each row's length.
    """
    scorer = _Scorer(model)
    device, dtype = scorer.device, scorer.dtype
    B, T = z.shape
    P = prompt_ids.shape[1]
    S = T + 1
    rows = torch.arange(B, device=device) if rows is None else rows
    prompt_len = prompt_mask.sum(1)  # (U,)
    key_ok = prompt_mask.bool()  # (U, P)
    prompt_causal = torch.tril(torch.ones(P, P, dtype=torch.bool, device=device))
    eye = torch.eye(P, dtype=torch.bool, device=device)  # keeps the rows of left padding finite
    k_idx = torch.arange(S, device=device)
    live = k_idx[None, :] <= lengths[:, None]  # (B, S): the states whose log-rewards are read
    first = lengths if final_only else torch.zeros_like(lengths)  # the first suffix copy computed
    any_copies = any(rest.shape[1] > 0 for _, rest, _ in targets)

    # A: each distinct prompt once, its keys and values kept
    mask_a = (prompt_causal[None] & key_ok[:, None, :]) | eye[None]
    last_a, cache = scorer.run(prompt_ids, _additive_mask(mask_a, dtype), position_ids_from_mask(prompt_mask),
                               keep=1, keep_cache=True)
    cache = _prefix_cache(cache, rows, record=any_copies) if cache is not None else None
    copies_lp = []  # per target set, (B, S) Σ_t log p(rest_t | s_k, end, rest_<t)
    if cache is not None:
        # Z: the latents, each row reading its prompt's keys; the keys of [prompt z] are recorded
        if T > 0:
            mask_z = torch.cat([key_ok[rows][:, None, :].expand(B, T, P), prompt_causal.new_ones(T, T).tril()[None]
                                .expand(B, T, T)], 2)
            z_pos = prompt_len[rows][:, None] + torch.arange(T, device=device)[None, :]
            at_z, _ = scorer.run(z, _additive_mask(mask_z, dtype), z_pos, keep=T, cache=cache)
        else:
            at_z = last_a.new_zeros(B, 0, last_a.shape[-1])
        # left padding puts every prompt's last token at P - 1; the output at z_k is state s_k
        states = torch.cat([last_a[rows], at_z], 1)  # (B, S, X)
        if any_copies:
            prefix = [layer.recorded for layer in cache.layers] if T > 0 else [
                (layer.keys[rows], layer.values[rows]) for layer in cache.layers]  # per layer (B, h, P + T, d)
        for end, rest, rest_len in targets:
            lp = torch.zeros(B, S, device=device)
            if rest.shape[1] > 0:
                _copies_passes(scorer, cache, prefix, _fed(end, rest), rows, key_ok, prompt_len, lengths, first, rest,
                               rest_len, dtype, lp)
            copies_lp.append(lp)
    else:  # the cache cannot be shared (sliding-window or hybrid caches): one pass over [prompt][z][copies 0..T]
        for end, rest, rest_len in targets:
            W1 = rest.shape[1]
            allowed2, offset = _after_prompt_layout(T, W1, device)
            L2 = allowed2.shape[0]
            ids = torch.cat([prompt_ids[rows], z, _fed(end, rest).repeat(1, S)], 1)  # (B, P + L2)
            top = torch.cat([(prompt_causal[None] & key_ok[rows][:, None, :]) | eye[None],
                             torch.zeros(B, P, L2, dtype=torch.bool, device=device)], 2)
            bottom = torch.cat([key_ok[rows][:, None, :].expand(B, L2, P), allowed2[None].expand(B, L2, L2)], 2)
            position_ids = torch.cat([position_ids_from_mask(prompt_mask)[rows],
                                      prompt_len[rows][:, None] + offset[None]], 1)
            out, _ = scorer.run(ids, _additive_mask(torch.cat([top, bottom], 1), dtype), position_ids, keep=L2 + 1)
            states = out[:, :S]  # the prompt's last position, then z_1..z_T
            lp = torch.zeros(B, S, device=device)
            if W1 > 0:
                b, k = (live & (k_idx[None, :] >= first[:, None])).nonzero(as_tuple=True)
                _score_copies(scorer, out[:, S:].reshape(B, S, W1, out.shape[-1])[b, k], b, k, rest, rest_len, lp)
            copies_lp.append(lp)

    # at every live state: log p(z_{k+1} | s_k) (unused at k = n), and log p(end | s_k) of every target set
    z_next = torch.cat([z, z[:, :1] if T else z.new_zeros(B, 1)], 1)  # (B, S); the last column is never read
    state_targets = torch.stack([z_next] + [end[:, None].expand(B, S) for end, _, _ in targets], -1)
    at_state = torch.zeros(B, S, 1 + len(targets), device=device)
    at_state[live] = scorer.log_probs(states[live], state_targets[live])
    step_lp = torch.where(k_idx[None, :] < lengths[:, None], at_state[..., 0], 0.0)
    latent = torch.cat([step_lp.new_zeros(B, 1), step_lp[:, :T].cumsum(1)], 1)  # (B, S)
    return [_mask_states(latent + at_state[..., 1 + i] + copies_lp[i], lengths) for i in range(len(targets))]


def _fed(end: Tensor, rest: Tensor) -> Tensor:
    """(B, W1) the tokens fed in a copy of the suffix: y_1..y_{W-1} (y_W's output is never read)."""
    return torch.cat([end[:, None], rest[:, :-1]], 1) if rest.shape[1] > 0 else rest


def _score_copies(scorer, out: Tensor, b: Tensor, k: Tensor, rest: Tensor, rest_len: Tensor, acc: Tensor) -> None:
    """Adds Σ_t log p(rest_t | ...) of the copies (b, k), from their (n, W1, X) outputs, to acc[b, k]."""
    real = torch.arange(rest.shape[1], device=rest.device)[None, :] < rest_len[b][:, None]  # (n, W1)
    lp = torch.zeros(real.shape, device=acc.device)
    lp[real] = scorer.log_probs(out[real], rest[b][real][:, None])[:, 0]
    acc.index_put_((b, k), lp.sum(1), accumulate=True)


def _unique_rows(prompts: list[list[int]]) -> tuple[list[list[int]], list[int]]:
    """Distinct prompts, in order of first appearance, and each row's index among them."""
    index: dict[tuple, int] = {}
    rows = [index.setdefault(tuple(p), len(index)) for p in prompts]
    return [list(p) for p in index], rows


def _stop_target(stop: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """The target set (end, rest, rest_lengths) of the stop-token reward: end = ⊤ (B,), nothing after it."""
    return stop, stop.new_zeros(stop.shape[0], 0), stop.new_zeros(stop.shape[0])


def _packed_log_rewards_sets(
    model, prompt_ids: list[list[int]], z: Tensor, lengths: Tensor, stop_token_id: int, pad_token_id: int,
    suffix_sets: list[list[list[int]] | None], final_only: bool = False,
) -> list[Tensor]:
    """Per suffix set (None: the stop token), the (B, S) untempered log-rewards of one chunk of rows by the packed
    passes: rows that share a prompt share its pass (`_packed_log_rewards`)."""
    device = z.device
    unique, rows = _unique_rows(prompt_ids)
    p_ids, p_mask = left_pad(unique, pad_token_id, device)
    rows = torch.tensor(rows, dtype=torch.long, device=device)
    targets = []
    for suffixes in suffix_sets:
        if suffixes is None:
            targets.append(_stop_target(torch.full((z.shape[0],), stop_token_id, dtype=torch.long, device=device)))
        else:
            s_ids, s_len = right_pad(suffixes, pad_token_id, device=device)
            targets.append((s_ids[:, 0], s_ids[:, 1:], s_len - 1))
    return _packed_log_rewards(model, p_ids, p_mask, rows, z, lengths, targets, final_only)
