"""Per-prefix log-rewards from a frozen causal LM.

For a latent Z = z_1..z_n and every prefix s_k = z_1..z_k (k = 0..n) we need log R(s_k ⊤), untempered:

* stop-token reward (no suffix):  log R(s_k ⊤) = log p(z_1..z_k ⊤ | reward_prompt)
* fixed-suffix reward (suffix Y): log R(s_k ⊤) = log p(z_1..z_k Y | reward_prompt)   (no stop-token term)

Both are computed on token ids, `reward_prompt + Z [+ Y]`, never by re-tokenising decoded text.

The fixed-suffix reward naively needs n + 1 passes (one per prefix).  The packed scorer computes the same
thing (test_rewards.py proves they agree with the naive loop) over one shared computation of the prefix:

    A  each distinct reward prompt once (the k samples of a prompt share it), keeping its keys and values;
    Z  the latents z_1..z_T of every row, attending to their prompt's keys through a read-only cache; the output
       at the prompt's last token and at z_k is the state s_k, where log p(z_{k+1} | s_k), log p(y_1 | s_k)
       (or log p(⊤ | s_k)) are read;
    C  the copies of the suffix: copy k (k = 0..n, never past the latent's end) feeds y_1..y_{W-1} at the
       positions that follow z_k and attends to the prompt, z_1..z_k and itself, so its outputs give
       log p(y_{t+1} | s_k, y_1..y_t).  Several copies of a row share a row of the pass (`_copies_per_row`
       trades the copies' attention to each other against copying the prefix's keys).

A and Z are all the stop-token reward needs.  Where the prompt's cache cannot be shared (sliding-window caches)
one pass per row over [prompt][z_1..z_T][copy 0]..[copy T] with a 4-D attention mask does it instead.  LMs for
which no such layout is exact (ALiBi, recurrent or convolutional layers: `_packing_obstacle`), and sequences
longer than a sliding window, get ordinary passes instead: one per prefix for a suffix
(`suffix_log_rewards_naive`), one in all for the stop token (`stop_log_rewards_plain`).
Three more things keep the pass cheap:

* the output layer runs only where a log-probability is read, on gathered hidden states, `_HEAD_CHUNK_ELEMENTS`
  logits at a time, so no (B, L, V) logits are built; an LM whose logits are not `head(last hidden state)`
  (Gemma-2's soft-capping, Cohere's `logit_scale`, ...) gets full logits instead (`_split_lm_head`);
* log-softmax is never materialised: one logsumexp per scored position and a gather;
* identical rows (same prompt, latent and suffix) are scored once.

Dimension legend: B rows, U distinct prompts, P prompt width, T latent width, S = T + 1 states, W suffix width,
W1 = W - 1 tokens fed per copy, L2 = T + S W1 positions after the prompt, V vocabulary, H hidden size, X = H or V.
"""

from __future__ import annotations

import inspect
import warnings
import weakref
from contextlib import nullcontext

import torch
from torch import Tensor

from .sampling import left_pad, position_ids_from_mask, right_pad

try:  # the read-only prompt cache builds on transformers' dynamic cache (>= 5)
    from transformers.cache_utils import DynamicCache, DynamicLayer
except ImportError:  # pragma: no cover
    DynamicCache = DynamicLayer = None

# Logits computed at once by the output layer: 2^24 float32 values (64 MiB), e.g. 333 positions of a 50k vocabulary.
_HEAD_CHUNK_ELEMENTS = 2**24
# Keys (or values) of one layer held at once by the copies pass, which bounds its memory.  A GPU wants big passes;
# on a CPU passes of ~2k positions keep their activations in cache (measured 15-20 % faster than one big pass).
_KV_CHUNK_ELEMENTS = {"cpu": 2**20, "other": 2**25}

# Config fields of LMs whose logits are not the output layer applied to the last hidden state.
_LOGIT_TRANSFORMS = ("final_logit_softcapping", "logit_scale", "logits_scaling", "output_multiplier",
                     "lm_head_multiplier")

_SPLIT_CHECKED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # HF model -> verified split or None


def _token_log_probs(logits: Tensor, targets: Tensor, lse: Tensor | None = None) -> Tensor:
    """log softmax(logits)[targets] without materialising the full log-softmax: (..., V), (...) -> (...).

    `lse` (...), the logits' logsumexp, may be passed when several targets are read from the same logits."""
    logits = logits.float()
    if lse is None:
        lse = torch.logsumexp(logits, dim=-1)
    return logits.gather(-1, targets[..., None]).squeeze(-1) - lse


def _mask_states(log_r: Tensor, lengths: Tensor) -> Tensor:
    """States past each row's length get 0 (they are never used)."""
    S = log_r.shape[1]
    past = torch.arange(S, device=log_r.device)[None, :] > lengths[:, None]
    return log_r.masked_fill(past, 0.0)


def _hf_model(model):
    """The transformers model inside a PEFT wrapper (LoRA layers are injected in place, so the adapter context of
    the wrapper still applies), or the model itself."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def _text_config(model):
    """The (text) config of the transformers model inside `model`."""
    config = _hf_model(model).config
    return config.get_text_config() if hasattr(config, "get_text_config") else config


def _split_lm_head(model):
    """(backbone, head) with `model(x).logits == head(backbone(x).last_hidden_state)`, or None.

    None (the caller then runs the full forward) for: LMs with a logit transform in their config (soft-capping,
    logit scales), sharded parameters (FSDP2 DTensors, DeepSpeed ZeRO-3), models without a separate backbone or
    output layer, and any model on which one check on a short input disagrees (done once per model)."""
    hf = _hf_model(model)
    peft_config = getattr(model, "active_peft_config", None)
    if getattr(peft_config, "is_prompt_learning", False):
        return None  # the wrapper's forward adds virtual tokens that the backbone alone would not see
    if hf in _SPLIT_CHECKED:
        return _SPLIT_CHECKED[hf]
    split = None
    config = _text_config(hf)
    backbone = getattr(hf, "base_model", None)
    head = hf.get_output_embeddings() if hasattr(hf, "get_output_embeddings") else None
    transformed = [name for name in _LOGIT_TRANSFORMS if getattr(config, name, None) not in (None, 1, 1.0)]
    sharded = any(type(p).__name__ == "DTensor" or hasattr(p, "ds_id") for p in hf.parameters())
    if not transformed and not sharded and backbone is not None and backbone is not hf and head is not None:
        split = (backbone, head)
        ids = torch.arange(1, 6, device=head.weight.device)[None] % config.vocab_size
        was_training = hf.training
        hf.eval()
        with torch.no_grad():
            want = model(input_ids=ids, use_cache=False).logits[0, -1].float()
            got = head(backbone(input_ids=ids, use_cache=False).last_hidden_state[0, -1]).float()
        hf.train(was_training)
        tol = 1e-3 * max(1.0, want.abs().max().item())
        if got.shape != want.shape or not torch.allclose(got, want, rtol=1e-3, atol=tol):
            warnings.warn(f"{type(hf).__name__}: the logits are not head(last hidden state); the reward pass "
                          "computes full logits instead (slower, more memory).", stacklevel=3)
            split = None
    _SPLIT_CHECKED[hf] = split
    return split


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


def _sliding_window(model) -> int | None:
    """The attention window of an LM with sliding-window (or Llama-4-style chunked) layers, or None.  The packed
    masks do not apply it, so they are exact only while a sequence's true length stays within it."""
    config = _text_config(model)
    windows = [getattr(config, "attention_chunk_size", None)]
    if getattr(config, "use_sliding_window", True) is not False:  # Qwen2-style configs carry a window they do not use
        windows.append(getattr(config, "sliding_window", None))
    windows = [w for w in windows if isinstance(w, int) and w > 0]
    return min(windows) if windows else None


# Layer kinds whose attention reads token order from position_ids and visibility from the attention mask (windows
# and chunks apart: `_sliding_window`).
_PACKABLE_LAYERS = {"full_attention", "sliding_attention", "chunked_attention", "attention"}
# Config fields of hybrid attention / state-space LMs from before `layer_types` described them.
_HYBRID_FIELDS = ("layers_block_type", "hybrid_override_pattern", "attn_layer_period", "mamba_d_state")
_OBSTACLES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # HF model -> `_packing_obstacle`


def _packing_obstacle(model) -> str | None:
    """Why the packed layout would not give this LM's exact rewards, or None.

    The packed passes put the suffix copies after z_T in the sequence and tell the model their true positions
    through `position_ids` and what each token sees through a 4-D attention mask.  That is exact only for an LM
    whose every layer is attention that reads both: not for recurrent / convolutional / linear-attention layers
    (Mamba, RWKV, hybrids), whose state runs over the copies in sequence order, nor for LMs that take positions or
    windows from the token order (ALiBi: BLOOM, MPT, Falcon with alibi; GPT-Neo's local layers)."""
    hf = _hf_model(model)
    if hf not in _OBSTACLES:
        _OBSTACLES[hf] = _find_packing_obstacle(hf)
    return _OBSTACLES[hf]


def _find_packing_obstacle(hf) -> str | None:
    name, config = type(hf).__name__, _text_config(hf)
    kinds = set(map(str, getattr(config, "layer_types", None) or [])) - _PACKABLE_LAYERS
    if kinds:
        return f"{name} has {', '.join(sorted(kinds))} layers (a state over the token order, not attention)"
    if any(getattr(config, f, None) is not None for f in _HYBRID_FIELDS):
        return f"{name} has state-space layers (a state over the token order, not attention)"
    try:
        takes_positions = "position_ids" in inspect.signature(hf.forward).parameters
    except (TypeError, ValueError):  # pragma: no cover
        takes_positions = True
    if not takes_positions:
        return f"{name} takes no position_ids (positions come from the token order)"
    attn = getattr(config, "attn_config", None)
    attn_alibi = attn.get("alibi", False) if isinstance(attn, dict) else getattr(attn, "alibi", False)
    if getattr(config, "alibi", False) or attn_alibi or getattr(config, "position_embedding_type", None) == "alibi":
        return f"{name} uses ALiBi (positions come from the token order)"
    if "local" in (getattr(config, "attention_layers", None) or []):
        return f"{name} has local attention layers whose window follows the token order"
    return None


def _cache_kwarg(fn) -> str:
    """Recent transformers call the forward's `past_key_values` argument `cache`: use the name it declares."""
    try:
        return "cache" if "cache" in inspect.signature(fn).parameters else "past_key_values"
    except (TypeError, ValueError):  # pragma: no cover
        return "past_key_values"


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
        self.cache_name = _cache_kwarg(fn)

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
    return stop, stop.new_zeros(stop.shape[0], 0), stop.new_zeros(stop.shape[0])


@torch.no_grad()
def suffix_log_rewards_naive(
    model,
    prompt_ids: list[list[int]],
    z: Tensor,
    lengths: Tensor,
    suffix_ids: list[list[int]],
    pad_token_id: int,
    final_only: bool = False,
) -> Tensor:
    """Reference implementation: one ordinary forward pass per prefix length k (n + 1 passes).  (B, S) untempered.

    With `final_only`, one pass, for k = n only (the other states are 0)."""
    B, T = z.shape
    out = torch.zeros(B, T + 1, device=z.device)
    for ks in [lengths.tolist()] if final_only else [[k] * B for k in range(T + 1)]:
        rows = [prompt_ids[b] + z[b, :k].tolist() + suffix_ids[b] for b, k in enumerate(ks)]
        ids, mask = left_pad(rows, pad_token_id, z.device)
        scored = [k + len(suffix_ids[b]) for b, k in enumerate(ks)]  # the latent prefix and the suffix, per row
        keep = max(scored) + 1  # left-padded: the scored tokens end every row; logits only where they are read
        logits = model(input_ids=ids, attention_mask=mask, position_ids=position_ids_from_mask(mask),
                       use_cache=False, logits_to_keep=keep).logits[:, -keep:]
        lp = _token_log_probs(logits[:, :-1], ids[:, 1 - keep:])  # (B, keep-1): log p(token | the ones before)
        for b, k in enumerate(ks):
            out[b, k] = lp[b, keep - 1 - scored[b]:].sum()
    return _mask_states(out, lengths)


@torch.no_grad()
def stop_log_rewards_plain(
    model, prompt_ids: list[list[int]], z: Tensor, lengths: Tensor, stop_token_id: int, pad_token_id: int
) -> Tensor:
    """(B, S) log p(z_1..z_k ⊤ | prompt) by one ordinary pass over the left-padded [prompt z_1..z_T]: the logits at
    s_k give log p(⊤ | s_k), and log p(z_1..z_k | prompt) is a running sum.  Exact for any causal LM."""
    T = z.shape[1]
    ids, mask = left_pad([prompt_ids[b] + z[b].tolist() for b in range(z.shape[0])], pad_token_id, z.device)
    logits = model(input_ids=ids, attention_mask=mask, position_ids=position_ids_from_mask(mask),
                   use_cache=False, logits_to_keep=T + 1).logits[:, -(T + 1):]  # (B, S, V): next-token logits at s_k
    lse = torch.logsumexp(logits.float(), dim=-1)
    log_stop = _token_log_probs(logits, torch.full_like(lse, stop_token_id, dtype=torch.long), lse)  # (B, S)
    log_z = _token_log_probs(logits[:, :-1], z, lse[:, :-1])  # (B, T): log p(z_k | s_{k-1})
    prefix = torch.cat([torch.zeros_like(log_stop[:, :1]), log_z.cumsum(1)], dim=1)  # (B, S)
    return _mask_states(prefix + log_stop, lengths)


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
    """(B,) untempered log R(Z ⊤) of the finished latents only: what a reward maximiser (GRPO, RLOO, PPO) needs.

    Equal to `prefix_log_rewards(...)` at k = n, at the cost of one suffix copy per row instead of n + 1."""
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

    B = z.shape[0]
    chunk_size = chunk_size or B
    parts: list[list[Tensor]] = [[] for _ in suffix_sets]
    for lo in range(0, B, chunk_size):
        hi = min(B, lo + chunk_size)
        if obstacle is not None:  # ordinary left-padded sequences, which the model masks itself: exact
            for i, suffixes in enumerate(suffix_sets):
                parts[i].append(
                    stop_log_rewards_plain(model, prompt_ids[lo:hi], z[lo:hi], lengths[lo:hi], stop_token_id,
                                           pad_token_id) if suffixes is None
                    else suffix_log_rewards_naive(model, prompt_ids[lo:hi], z[lo:hi], lengths[lo:hi],
                                                  suffixes[lo:hi], pad_token_id, final_only))
            continue
        unique, rows = _unique_rows(prompt_ids[lo:hi])
        p_ids, p_mask = left_pad(unique, pad_token_id, device)
        rows = torch.tensor(rows, dtype=torch.long, device=device)
        targets = []
        for suffixes in suffix_sets:
            if suffixes is None:
                targets.append(_stop_target(torch.full((hi - lo,), stop_token_id, dtype=torch.long, device=device)))
            else:
                s_ids, s_len = right_pad(suffixes[lo:hi], pad_token_id, device=device)
                targets.append((s_ids[:, 0], s_ids[:, 1:], s_len - 1))
        out = _packed_log_rewards(model, p_ids, p_mask, rows, z[lo:hi], lengths[lo:hi], targets, final_only)
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
                log_r = log_r + self.contrast_penalty * ((wrong[0] > log_r) & has)
        model.train(was_training)
        return log_r.float()
