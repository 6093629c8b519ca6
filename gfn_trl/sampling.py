"""Rollouts and the policy's log-probabilities, under one set of constraints.

The GFlowNet loss only drives the *sampled* distribution to R if the log-probabilities in the loss are those
of the distribution that generated the samples.  So the constraints (vocabulary mask, no stop before
`min_length`, forced stop at `max_length`, a tool's forced outputs) live in one function,
`LatentConstraints.apply`, called both by
the sampler (`sample_latents`, our own decode loop with the KV cache) and by the teacher-forced pass that computes
the loss's log-probabilities.  Exploration temperature scales the logits for sampling only; the loss always uses
temperature 1.  The sampler does not use `generate`, so no setting of the checkpoint's `generation_config.json`
(repetition penalty, n-gram bans, top-k, ...) reaches it; decoders that do use `generate` call `clean_generate`.

Dimension legend: B rows, P prompt width (left-padded), T latent width, S = T + 1 states, V vocabulary.
"""

from __future__ import annotations

import inspect
import math
import weakref
import zlib
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

import torch
from torch import Tensor
from transformers import GenerationConfig

from .models import CACHE_KWARGS, cache_kwarg
from .tools import Tool


@dataclass
class LatentConstraints:
    """The constrained policy's rules.

    Attributes:
        stop_token_id: the action ⊤ that ends the latent (EOS by default).
        max_length: the latent has at most this many tokens; at state s_max the stop is forced.
        min_length: states shorter than this cannot stop (the stop action is removed from their support).
        allowed: optional (V,) bool mask of the tokens the latent may use; the stop token is always allowed.
        tool: optional tool (`gfn_trl.tools`) whose outputs are forced tokens of the state, not policy actions: where
            it appends token t, t is the only action (it may lie outside `allowed`) and the stop is banned, except at
            `max_length`, where the stop is forced and the tool's output is cut.
    """

    stop_token_id: int
    max_length: int
    min_length: int = 0
    allowed: Tensor | None = None
    tool: Tool | None = None

    def __post_init__(self):
        if self.max_length < 1:
            raise ValueError(f"max_completion_length must be >= 1, got {self.max_length}.")
        if not 0 <= self.min_length <= self.max_length:
            raise ValueError(
                f"min_completion_length ({self.min_length}) must lie in [0, max_completion_length={self.max_length}]."
            )

    def forced(self, z: Tensor) -> Tensor | None:
        """(B, W + 1): the token the tool appends at each state s_0 .. s_W of the rows of `z` (B, W), -1 where the
        policy acts; None without a tool.  Entries past a row's latent are meaningless."""
        if self.tool is None:
            return None
        return torch.tensor([self.tool.forced_tokens(row) for row in z.tolist()], dtype=torch.long, device=z.device)

    def forced_next(self, prefixes: list[list[int]], device=None) -> Tensor | None:
        """(B,): the token the tool appends after each latent prefix (-1 where the policy acts); None without a tool.
        What a decoder needs at its current state (`forced` gives every state of finished latents)."""
        if self.tool is None:
            return None
        return torch.tensor([self.tool.forced_tokens(p)[-1] for p in prefixes], dtype=torch.long, device=device)

    def apply_decoding(self, logits: Tensor, written: Tensor) -> Tensor:
        """`apply` at a decoder's current state, where `written` (B, k) holds the latent tokens generated so far
        (the tool is asked for its next token only if there is a tool: no host copy of the ids otherwise)."""
        forced = None if self.tool is None else self.forced_next(written.tolist(), logits.device)
        return self.apply(logits.float(), written.shape[1], forced)

    def admits(self, latent: list[int]) -> bool:
        """Whether the constrained policy can write `latent` (then stop): its length, vocabulary and tool outputs."""
        if not self.min_length <= len(latent) <= self.max_length:
            return False
        forced = self.tool.forced_tokens(latent) if self.tool is not None else [-1] * (len(latent) + 1)
        for token, f in zip(latent, forced):
            if f >= 0 and token != f:
                return False
            if f < 0 and (token == self.stop_token_id or (self.allowed is not None and not bool(self.allowed[token]))):
                return False
        return forced[-1] < 0 or len(latent) == self.max_length  # the tool must not be mid-output at the stop

    def apply(self, logits: Tensor, state_index: Tensor | int, forced: Tensor | None = None) -> Tensor:
        """Constrained logits: banned actions get -inf.

        Args:
            logits: (..., V) float logits at some states.
            state_index: number of latent tokens already generated at each state, an int or a tensor
                broadcastable to `logits.shape[:-1]`.
            forced: optional token the tool appends at each state (-1: none), broadcastable to `logits.shape[:-1]`
                (`LatentConstraints.forced`).
        """
        V = logits.shape[-1]
        neg_inf = float("-inf")
        out = logits
        if self.allowed is not None:
            allowed = self.allowed.to(logits.device)
            if allowed.shape[0] < V:  # model vocab padded beyond the tokenizer's
                allowed = torch.cat([allowed, allowed.new_zeros(V - allowed.shape[0])])
            allowed = allowed[:V].clone()
            allowed[self.stop_token_id] = True
            out = out.masked_fill(~allowed, neg_inf)
        state_index = torch.as_tensor(state_index, device=logits.device)
        is_stop = torch.zeros(V, dtype=torch.bool, device=logits.device)
        is_stop[self.stop_token_id] = True
        too_short = (state_index < self.min_length)[..., None]  # (..., 1)
        at_max = (state_index >= self.max_length)[..., None]  # (..., 1)
        out = out.masked_fill(too_short & is_stop, neg_inf)
        if forced is not None:  # the tool's token is the only action (whatever the vocabulary mask says) ...
            forced = torch.as_tensor(forced, device=logits.device).expand(logits.shape[:-1])
            only = torch.zeros_like(logits, dtype=torch.bool).scatter_(-1, forced.clamp(min=0)[..., None], True)
            out = torch.where((forced >= 0)[..., None], logits.masked_fill(~only, neg_inf), out)
            out = torch.where(at_max, logits, out)  # ... except at max_length, where the stop is forced
        out = out.masked_fill(at_max & ~is_stop, neg_inf)
        return out


_MASK32 = 0xFFFFFFFF


def counter_seed(*parts) -> int:
    """A 32-bit seed that is a pure function of `parts` (CRC-32 of their `str`s joined by ":"), for counter-based
    randomness: e.g. `counter_seed("decode", seed, prompt, sample)`.  The same parts give the same seed on every
    process, after every resume and in every batch layout."""
    return zlib.crc32(":".join(str(p) for p in parts).encode("utf-8"))


def hash32(x: Tensor) -> Tensor:
    """A 32-bit integer hash (T. Mueller's), vectorised on int64 tensors without overflow."""
    x = x & _MASK32
    x = (((x >> 16) ^ x) * 0x45D9F3B) & _MASK32
    x = (((x >> 16) ^ x) * 0x45D9F3B) & _MASK32
    return (x >> 16) ^ x


def gumbel_noise(row_seeds: Tensor, step: int, vocab_size: int) -> Tensor:
    """(B, V) standard Gumbel noise that is a pure function of (row seed, step, token id).

    Counter-based randomness: a latent's draws do not depend on the batch it shares, the process it runs on,
    or the RNG state, so runs reproduce across world sizes, batch layouts and resumes.
    """
    token = torch.arange(vocab_size, device=row_seeds.device, dtype=torch.long)
    h = hash32(hash32(row_seeds.long()[:, None] ^ (step * 0x9E3779B1 & _MASK32)) ^ token[None, :])
    h = hash32(h ^ (row_seeds.long()[:, None] >> 13))
    u = (h.double() + 0.5) / 2.0**32  # in (0, 1)
    return -torch.log(-torch.log(u))


def left_pad(sequences: list[list[int]], pad_token_id: int, device=None) -> tuple[Tensor, Tensor]:
    """(B, P) left-padded ids and attention mask."""
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for b, s in enumerate(sequences):
        if len(s):
            ids[b, width - len(s) :] = torch.tensor(s, dtype=torch.long)
            mask[b, width - len(s) :] = 1
    return ids.to(device), mask.to(device)


def right_pad(
    sequences: list[list[int]], pad_token_id: int, width: int | None = None, device=None
) -> tuple[Tensor, Tensor]:
    """(B, W) right-padded ids and lengths (B,)."""
    width = max([len(s) for s in sequences] + [0]) if width is None else width
    ids = torch.full((len(sequences), max(width, 0)), pad_token_id, dtype=torch.long)
    for b, s in enumerate(sequences):
        ids[b, : len(s)] = torch.tensor(s, dtype=torch.long)
    lengths = torch.tensor([len(s) for s in sequences], dtype=torch.long)
    return ids.to(device), lengths.to(device)


def latent_batch(latents: list[list[int]], stop_id: int, device=None) -> tuple[Tensor, Tensor]:
    """Latents (token ids, no stop) as the losses and rewards take them: (B, T) right-padded with the stop, T >= 1
    even when every latent is empty, and their (B,) lengths."""
    z, lengths = right_pad(latents, stop_id, device=device)
    if z.shape[1] == 0:  # every latent is empty
        z = torch.full((len(latents), 1), stop_id, dtype=torch.long, device=device)
    return z, lengths


def position_ids_from_mask(mask: Tensor) -> Tensor:
    """Positions 0, 1, ... over the real tokens of a left-padded batch (pads get 0)."""
    return (mask.long().cumsum(-1) - 1).clamp(min=0)


# ---------------------------------------------------------------------------------------------------------------------
# Decoding.  The sampler is our own loop over the model's forward, not `generate`: `generate` fills every generation
# setting the caller leaves unset from the checkpoint's `generation_config.json` (repetition penalties, n-gram bans,
# suppressed tokens, minimum lengths, top-k/top-p cutoffs, ...), and those processors would reshape the sampled
# distribution away from the constrained policy that the loss trains.


@dataclass(frozen=True)
class _DecoderArgs:
    """How to call a causal LM's forward step by step (read once from its signature)."""

    cache: str  # the argument that takes the cache: `cache` (transformers >= 5.2x), `past_key_values`, `cache_params`
    positions: bool  # takes `position_ids` (ALiBi and recurrent LMs need none: positions come from the token order)
    keep: bool  # takes `logits_to_keep` (then the output layer runs on the last position only)


def _decoder_args(model) -> _DecoderArgs:
    hf = model.get_base_model() if hasattr(model, "get_base_model") else model  # the transformers model under PEFT
    params = inspect.signature(hf.forward).parameters
    return _DecoderArgs(cache_kwarg(hf.forward), "position_ids" in params, "logits_to_keep" in params)


def _forward_step(model, args: _DecoderArgs, ids: Tensor, mask: Tensor, positions: Tensor, cache):
    """One forward of `ids` (B, L) after `cache`: the last position's (B, V) float32 logits and the new cache."""
    kw = {"position_ids": positions} if args.positions else {}
    if args.keep:
        kw["logits_to_keep"] = 1
    if cache is not None:
        kw[args.cache] = cache
    out = model(input_ids=ids, attention_mask=mask, use_cache=True, **kw)
    new_cache = next((getattr(out, n) for n in CACHE_KWARGS if getattr(out, n, None) is not None), None)
    return out.logits[:, -1].float(), new_cache


def _recurrent(args: _DecoderArgs, cache) -> bool:
    """Whether the cache is a recurrent state only (Mamba, Falcon-Mamba): such a forward applies the attention
    mask to the positions it is fed, so at decode steps it must get none (the whole mask would broadcast against
    the one new position and silently mix the batch's rows)."""
    linear = getattr(cache, "is_linear", None)  # per layer, in transformers' caches
    return args.cache == "cache_params" or (bool(linear) and all(linear))


def _sharded(model) -> bool:
    """Whether every rank must run the same number of forwards (DeepSpeed ZeRO-3 or FSDP gather the weights in
    each forward, so a rank that stopped early would leave the others waiting forever)."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return False
    if torch.distributed.get_world_size() < 2:
        return False
    from transformers.integrations.deepspeed import is_deepspeed_zero3_enabled

    # FSDP1 wraps modules in FullyShardedDataParallel; FSDP2's fully_shard renames their class FSDP<name>
    fsdp = any(type(m).__name__.startswith(("FullyShardedDataParallel", "FSDP")) for m in model.modules())
    return is_deepspeed_zero3_enabled() or fsdp


def _all_stopped(done: Tensor, sharded: bool) -> bool:
    """Whether every row (of every rank, when sharded) has stopped."""
    if not sharded:
        return bool(done.all())
    running = (~done).sum().float()
    torch.distributed.all_reduce(running)
    return running.item() == 0


@torch.no_grad()
def sample_latents(
    model,
    prompt_ids: Tensor,
    prompt_mask: Tensor,
    constraints: LatentConstraints,
    temperature: float = 1.0,
    pad_token_id: int | None = None,
    row_seeds: Tensor | None = None,
    cache_implementation: str | None = None,
    compile: bool | None = None,
) -> tuple[Tensor, Tensor]:
    """Sample Z from the constrained policy at an exploration temperature, with the KV cache.

    Our own decode loop, not `generate`: the next-token distribution is softmax(LatentConstraints.apply(logits) /
    temperature) and nothing else, whatever `generation_config.json` the checkpoint ships (`generate` fills unset
    fields from it, and its repetition penalties, n-gram bans, cutoffs ... would then reshape what is sampled).
    The prompt is prefilled once (attention mask and positions of the left-padded batch), then each step feeds
    the B chosen tokens after the cache; it stops when every row has stopped (with ZeRO-3 / FSDP, every rank's).
    Attention LMs (RoPE, learned or ALiBi positions) and recurrent or hybrid LMs (Mamba, LFM2) all decode so.

    Args:
        model: a causal LM (transformers, possibly PEFT-wrapped), in eval mode.
        prompt_ids, prompt_mask: (B, P) left-padded prompts (one row per sample).
        constraints: the constrained policy's rules.
        temperature: exploration temperature (> 0) that divides the constrained logits.
        pad_token_id: unused (the latents are padded with the stop token); kept for callers.
        row_seeds: optional (B,) integers in [0, 2^32): each row's randomness is then a pure function of its
            seed (Gumbel-max sampling); without them the loop samples with `torch.multinomial` and the global RNG.
        cache_implementation: `"dynamic"` (a cache that grows by one position per step) or `"static"` (one
            preallocated `transformers.StaticCache` of the final width, fixed shapes at every step: the loop of
            `_sample_static`); None takes the `sampler_options` in force (default `"dynamic"`).  Both draw the same
            latents for the same row seeds (`tests/test_fast_sampler.py`).
        compile: compile the static loop's decode step with `torch.compile` (CUDA graphs on a GPU); implies
            `cache_implementation="static"`.  None takes the `sampler_options` in force (default off).
    Returns:
        z: (B, T) latent tokens, right-padded with the stop token; T <= max_length.
        lengths: (B,) number of latent tokens before the stop action.
    Raises:
        ValueError: if `temperature` <= 0, an unknown `cache_implementation`, `compile` with
            `cache_implementation="dynamic"`, or a static cache on an LM that cannot decode exactly with one
            (`static_cache_obstacle`).
    """
    if temperature <= 0:
        raise ValueError(f"Sampling temperature must be > 0, got {temperature}.")
    options = _resolve_options(cache_implementation, compile)
    B, P = prompt_ids.shape
    device, stop = prompt_ids.device, constraints.stop_token_id
    if B == 0:
        return prompt_ids.new_zeros(0, 0), prompt_ids.new_zeros(0)
    if options.cache_implementation == "static":
        return _sample_static(model, prompt_ids, prompt_mask, constraints, temperature, row_seeds, options.compile)
    steps = constraints.max_length + 1  # at most max_length tokens, then the stop (forced at s_max)
    if row_seeds is not None:
        row_seeds = torch.as_tensor(row_seeds, dtype=torch.long, device=device)
    args, sharded = _decoder_args(model), _sharded(model)
    # Buffers of the final width, so each step writes in place (static shapes for a later compile).
    new = torch.full((B, steps), stop, dtype=torch.long, device=device)  # the tokens chosen, stop once a row stops
    mask = torch.cat([prompt_mask.long(), prompt_mask.new_ones(B, steps).long()], dim=1)  # (B, P + steps)
    done = torch.zeros(B, dtype=torch.bool, device=device)
    inputs, positions, cache = prompt_ids, position_ids_from_mask(prompt_mask), None
    for step in range(steps):
        step_mask = None if mask is None else mask[:, : P + step]  # the prompt's and every token fed since
        logits, cache = _forward_step(model, args, inputs, step_mask, positions, cache)
        scores = constraints.apply_decoding(logits, new[:, :step]) / temperature  # (B, V) float32
        if row_seeds is not None:  # Gumbel-max: the argmax of the perturbed scores is an exact sample
            token = (scores + gumbel_noise(row_seeds, step, scores.shape[-1]).to(scores.dtype)).argmax(-1)
        else:
            token = torch.multinomial(torch.softmax(scores, dim=-1), 1).squeeze(1)
        token = _emit(token, new, step, done, stop)
        if _all_stopped(done, sharded):
            break
        inputs, positions = token[:, None], positions[:, -1:] + 1
        if step == 0 and _recurrent(args, cache):
            mask = None  # the state already holds the prompt, and the fed token is never padding
    return _trimmed(new, stop)


def _emit(token: Tensor, new: Tensor, step: int, done: Tensor, stop: int) -> Tensor:
    """Write step `step`'s (B,) tokens into `new` (B, steps), a stopped row emitting the stop again; update `done`
    in place.  Shared by both decode loops."""
    token = torch.where(done, torch.full_like(token, stop), token)
    new[:, step] = token
    done |= token == stop
    return token


def _trimmed(new: Tensor, stop: int) -> tuple[Tensor, Tensor]:
    """`(z, lengths)`: the latents cut after the longest one's first stop, and each row's length (its first stop;
    every row has one, forced at the maximum length)."""
    lengths = (new == stop).long().argmax(dim=1)
    T = int(lengths.max()) if new.shape[0] else 0
    return new[:, :T].clone(), lengths


# ---------------------------------------------------------------------------------------------------------------------
# The static-cache loop: the same sampler on fixed shapes, so that its decode step can be compiled (CUDA graphs on a
# GPU, where a small batch's step is launch-bound).  Everything a step reads has the same shape at every step: one
# `transformers.StaticCache` of the final width P + max_length + 1, the full (B, P + steps) attention mask (positions
# not yet written are hidden by causality), the one new token per row, its position, and the step index as a 0-d
# tensor (a Python int would be a new constant, and a recompile, at every step).

CACHE_IMPLEMENTATIONS = ("dynamic", "static")


@dataclass(frozen=True)
class SamplerOptions:
    """How `sample_latents` decodes when its caller does not say (`sampler_options`).

    Attributes:
        cache_implementation: `"dynamic"` (default) or `"static"` (`transformers.StaticCache`, fixed shapes).
        compile: compile the static loop's decode step (`torch.compile`; CUDA graphs on a GPU).
    """

    cache_implementation: str = "dynamic"
    compile: bool = False


_OPTIONS: ContextVar[SamplerOptions | None] = ContextVar("gfn_trl_sampler_options", default=None)


def _resolve_options(cache_implementation: str | None, compile: bool | None) -> SamplerOptions:
    """The settings of a call: its own where given, else those of the `sampler_options` in force."""
    default = _OPTIONS.get() or SamplerOptions()
    impl = default.cache_implementation if cache_implementation is None else cache_implementation
    if impl not in CACHE_IMPLEMENTATIONS:
        raise ValueError(f"cache_implementation must be one of {CACHE_IMPLEMENTATIONS}, got {impl!r}.")
    if compile is None:  # an explicit "dynamic" turns the compile in force off
        compiled = default.compile and cache_implementation != "dynamic"
    else:
        compiled = bool(compile)
    if compiled and cache_implementation == "dynamic":
        raise ValueError("compile=True needs fixed shapes: use cache_implementation='static' (or leave it unset), not "
                         "'dynamic'.")
    return SamplerOptions("static" if compiled else impl, compiled)


@contextmanager
def sampler_options(cache_implementation: str | None = None, compile: bool | None = None):
    """Within the block, `sample_latents` calls that do not choose themselves decode with these settings (the
    evaluation's and the decoding baselines' calls included).  Arguments left None keep the settings in force;
    `compile=True` implies `cache_implementation="static"`.

    Raises:
        ValueError: an unknown `cache_implementation`, or `compile=True` with `cache_implementation="dynamic"`.
    """
    token = _OPTIONS.set(_resolve_options(cache_implementation, compile))
    try:
        yield
    finally:
        _OPTIONS.reset(token)


def static_cache_obstacle(model, length: int) -> str | None:
    """Why `model` cannot decode sequences of `length` tokens exactly with a `transformers.StaticCache`, or None.

    Recurrent and hybrid LMs (Mamba, LFM2: a state, not a key/value cache) have no static cache to give, and a
    sliding-window layer's static cache wraps around once the sequence outgrows its window (then its layout is not
    that of the dynamic cache); every other decoder of transformers decodes with one.
    """
    from transformers import StaticCache

    hf = model.get_base_model() if hasattr(model, "get_base_model") else model
    if _decoder_args(hf).cache == "cache_params":
        return f"{type(hf).__name__} keeps a recurrent state, not a key/value cache"
    try:
        cache = StaticCache(config=hf.config, max_cache_len=length)
    except Exception as e:  # noqa: BLE001 - any failure means: no static cache for this config
        return f"transformers cannot build a StaticCache for {type(hf).__name__} ({type(e).__name__}: {e})"
    if any(cache.is_linear):
        return f"{type(hf).__name__} has linear-attention or recurrent layers"
    config = hf.config.get_text_config() if hasattr(hf.config, "get_text_config") else hf.config
    windows = [getattr(config, n, None) for n in ("sliding_window", "window_size", "attention_chunk_size")]
    windows = [w for w in windows if isinstance(w, int) and w > 0]
    if (any(cache.is_sliding) or windows) and windows and length > min(windows):
        return f"sequences of {length} tokens exceed {type(hf).__name__}'s attention window ({min(windows)})"
    return None


_STATIC_CACHES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> StaticCache, kept when compiling
_COMPILED: dict[str, object] = {}  # torch.compile mode -> the compiled decode step


def _static_cache(hf, batch: int, length: int, keep: bool):
    """A StaticCache for `batch` rows of `length` tokens; with `keep`, the model's last one, reset, when it has that
    shape (a compiled step, and a CUDA graph above all, is bound to its cache's addresses)."""
    from transformers import StaticCache

    if keep:
        cache = _STATIC_CACHES.get(hf)
        if cache is not None and getattr(cache, "_gfn_shape", None) == (batch, length):
            cache.reset()
            return cache
    cache = StaticCache(config=hf.config, max_cache_len=length)
    cache._gfn_shape = (batch, length)
    if keep:
        _STATIC_CACHES[hf] = cache
    return cache


def _choose(logits: Tensor, constraints: LatentConstraints, step: Tensor, temperature: Tensor,
            row_seeds: Tensor | None) -> Tensor:
    """The constrained, tempered scores at state index `step` (0-d): the Gumbel-max token (B,) with row seeds, else
    the (B, V) float32 scores (the caller draws with `torch.multinomial`, from the global RNG as the dynamic loop)."""
    scores = constraints.apply(logits.float(), step) / temperature
    if row_seeds is None:
        return scores
    return (scores + gumbel_noise(row_seeds, step, scores.shape[-1]).to(scores.dtype)).argmax(-1)


def _static_step(model, args: _DecoderArgs, ids: Tensor, mask: Tensor, positions: Tensor, cache, step: Tensor,
                 temperature: Tensor, row_seeds: Tensor | None, constraints: LatentConstraints | None):
    """One forward of `ids` (B, L) into the static cache: the last position's (B, V) float32 logits, or, with
    `constraints` (no tool), the choice of `_choose` fused into the same (compiled) call."""
    logits, _ = _forward_step(model, args, ids, mask, positions, cache)
    if constraints is None:
        return logits
    return _choose(logits, constraints, step, temperature, row_seeds)


def _compiled_step():
    """`_static_step` compiled once per process: CUDA graphs ("reduce-overhead") where CUDA is available, inductor's
    default elsewhere.  Dynamo re-specialises it per model and shape (a new batch size or prompt bucket)."""
    mode = "reduce-overhead" if torch.cuda.is_available() else "default"
    if mode not in _COMPILED:
        _COMPILED[mode] = torch.compile(_static_step, mode=mode, dynamic=False)
    return _COMPILED[mode]


def _bucket(width: int, multiple: int = 32) -> int:
    return int(math.ceil(width / multiple) * multiple)


@torch.no_grad()
def _sample_static(model, prompt_ids: Tensor, prompt_mask: Tensor, constraints: LatentConstraints,
                   temperature: float, row_seeds, compile: bool) -> tuple[Tensor, Tensor]:
    """`sample_latents` on a static cache (the arguments and returns of `sample_latents`).

    The prefill runs eagerly (its width changes from batch to batch); the decode steps, compiled or not, see fixed
    shapes.  Compiled, the prompts are left-padded to a multiple of 32 tokens (masked, so the latents do not change)
    so that batches of nearby widths share one compiled step.  The choice of each token is the dynamic loop's
    (`LatentConstraints.apply`, / temperature, Gumbel-max or `torch.multinomial`), so for the same row seeds the
    two loops draw the same latents up to floating-point ties (the static attention runs over the full width)."""
    hf = model.get_base_model() if hasattr(model, "get_base_model") else model
    device, stop = prompt_ids.device, constraints.stop_token_id
    steps = constraints.max_length + 1
    args, sharded = _decoder_args(model), _sharded(model)
    if compile and sharded:
        raise ValueError("compile=True is not supported with weights sharded over processes (ZeRO-3, FSDP): their "
                         "hooks gather weights inside each forward. Decode with compile=False.")
    B, P = prompt_ids.shape
    if compile and _bucket(P) != P:  # masked left padding: same latents, fewer distinct shapes to compile
        extra = _bucket(P) - P
        prompt_ids = torch.cat([prompt_ids.new_full((B, extra), stop), prompt_ids], dim=1)
        prompt_mask = torch.cat([prompt_mask.new_zeros(B, extra), prompt_mask], dim=1)
        P = prompt_ids.shape[1]
    obstacle = static_cache_obstacle(model, P + steps)
    if obstacle is not None:
        raise ValueError(f"cache_implementation='static' cannot decode this LM exactly: {obstacle}. Use "
                         "cache_implementation='dynamic' (the default) for it.")
    if row_seeds is not None:
        row_seeds = torch.as_tensor(row_seeds, dtype=torch.long, device=device)
    cache = _static_cache(hf, B, P + steps, keep=compile)
    mask = torch.cat([prompt_mask.long(), prompt_mask.new_ones(B, steps).long()], dim=1)  # (B, P + steps), fixed
    positions = position_ids_from_mask(prompt_mask)[:, -1:]  # advanced before each decode step
    temp = torch.tensor(float(temperature), dtype=torch.float32, device=device)
    fused = constraints if constraints.tool is None else None  # a tool's forced tokens are host-side
    step_fn = _compiled_step() if compile else _static_step
    new = torch.full((B, steps), stop, dtype=torch.long, device=device)
    done = torch.zeros(B, dtype=torch.bool, device=device)
    token = None
    for step in range(steps):
        step_t = torch.tensor(step, dtype=torch.long, device=device)
        if step == 0:  # the prefill, eager
            out = _static_step(model, args, prompt_ids, mask, position_ids_from_mask(prompt_mask), cache, step_t,
                               temp, row_seeds, fused)
        else:
            positions = positions + 1
            if compile and hasattr(torch.compiler, "cudagraph_mark_step_begin"):
                torch.compiler.cudagraph_mark_step_begin()
            out = step_fn(model, args, token[:, None], mask, positions, cache, step_t, temp, row_seeds, fused)
        if fused is None:  # a tool: the constraints need the written prefix on the host
            scores = constraints.apply_decoding(out, new[:, :step]) / temperature
            out = scores if row_seeds is None else \
                (scores + gumbel_noise(row_seeds, step, scores.shape[-1]).to(scores.dtype)).argmax(-1)
        if row_seeds is None:
            out = torch.multinomial(torch.softmax(out, dim=-1), 1).squeeze(1)
        token = _emit(out, new, step, done, stop)
        if _all_stopped(done, sharded):
            break
    return _trimmed(new, stop)


# ---------------------------------------------------------------------------------------------------------------------
# `generate` without the checkpoint's settings, for decoders that want HF's (beam search, top-p sampling, ...)


def clean_generation_config(**settings) -> GenerationConfig:
    """A `GenerationConfig` holding `settings` and nothing else a checkpoint could have set (for `clean_generate`).

    With `do_sample=True` and no `top_k` given, `top_k=0`: transformers' global default (50) would truncate.
    """
    if settings.get("do_sample") and "top_k" not in settings:
        settings["top_k"] = 0
    return GenerationConfig(**settings)


@contextmanager
def checkpoint_generation_config_ignored(model):
    """Within the block, `generate` on `model` fills unset generation fields from transformers' global defaults
    only, not from the checkpoint's `generation_config.json`.

    `generate` fills every field the caller's config leaves at None from `model.generation_config`, and the fields
    whose neutral value *is* None (bad_words_ids, suppress_tokens, sequence_bias, forced_bos_token_id, ...) cannot be
    neutralised by the caller's config; so each module's `generation_config` is swapped for a blank one, and put back
    on exit.  Not thread-safe: another thread generating with the same model meanwhile sees the blank config.
    """
    saved = [(m, m.generation_config) for m in model.modules()
             if isinstance(vars(m).get("generation_config"), GenerationConfig)]  # set on the module, not inherited
    try:
        for m, _ in saved:
            m.generation_config = GenerationConfig()
        yield
    finally:
        for m, config in saved:
            m.generation_config = config


def clean_generate(model, input_ids: Tensor, attention_mask: Tensor, logits_processor=None, **settings) -> Tensor:
    """`model.generate` with exactly the logits processors that `settings` and `logits_processor` ask for.

    Args:
        input_ids, attention_mask: (B, P) left-padded prompts.
        logits_processor: an optional `LogitsProcessorList`, run before HF's own processors and warpers.
        settings: `GenerationConfig` fields (max_new_tokens, eos_token_id, pad_token_id, do_sample, top_p, ...);
            every field not given keeps its neutral default, whatever the checkpoint ships.
    Returns:
        (B, P + N) the prompts and the N generated tokens (rows that stopped are padded with `pad_token_id`).
    """
    with checkpoint_generation_config_ignored(model):
        return model.generate(input_ids=input_ids, attention_mask=attention_mask, logits_processor=logits_processor,
                              generation_config=clean_generation_config(**settings))


def policy_log_probs(
    model,
    prompt_ids: Tensor,
    prompt_mask: Tensor,
    z: Tensor,
    lengths: Tensor,
    constraints: LatentConstraints,
    return_hidden: bool = False,
):
    """One teacher-forced pass over prompt + Z: the constrained policy's log-probabilities at temperature 1.

    Returns:
        log_pf: (B, T) log q(z_k | s_{k-1}) (meaningful for k <= n)
        log_pterm: (B, S) log q(⊤ | s_i) (meaningful for i <= n; 0 at s_max because the stop is forced)
        hidden (only with return_hidden): (B, S, H) last-layer hidden state of every state s_0..s_T (the hidden
            state at the last token of s_i; s_0's is the last prompt token's)
    """
    B, P = prompt_ids.shape
    T = z.shape[1]
    input_ids = torch.cat([prompt_ids, z], dim=1)  # (B, P + T)
    mask = torch.cat([prompt_mask, torch.ones_like(z)], dim=1)
    out = model(
        input_ids=input_ids,
        attention_mask=mask,
        position_ids=position_ids_from_mask(mask),
        logits_to_keep=T + 1,
        output_hidden_states=return_hidden,
        use_cache=False,
    )
    logits = out.logits[:, -(T + 1) :].float()  # (B, S, V): state s_i's next-token logits
    states = torch.arange(T + 1, device=logits.device)
    logp = torch.log_softmax(constraints.apply(logits, states, constraints.forced(z)), dim=-1)  # (B, S, V)
    log_pterm = logp[..., constraints.stop_token_id]  # (B, S)
    taken = torch.arange(1, T + 1, device=z.device)[None, :] <= lengths[:, None]  # (B, T)
    z_safe = torch.where(taken, z, torch.full_like(z, constraints.stop_token_id))
    log_pf = logp[:, :-1].gather(-1, z_safe[..., None]).squeeze(-1)  # (B, T)
    log_pf = torch.where(taken, log_pf, torch.zeros_like(log_pf))
    if return_hidden:
        hidden = out.hidden_states[-1][:, P - 1 :]  # (B, S, H): the prompt is left-padded, so P-1 is its last token
        return log_pf, log_pterm, hidden
    return log_pf, log_pterm
