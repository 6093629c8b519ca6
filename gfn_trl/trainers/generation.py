"""The seam between a trainer and what generates its latents: `RolloutTrainer.sample` asks its `generation_backend`.

A backend gets the policy, the latent's constraints and a `GenerationRequest` (the rows, their left-padded prompts,
the exploration temperature, one counter-based seed per latent and the optimizer step whose weights the policy
holds) and returns the latents.  Three ship here or beside:

* `DecodeLoop` (the default): our decode loop, `gfn_trl.sampling.sample_latents`, dynamic or static cache, eager or
  compiled (`RolloutConfig.cache_implementation`, `sampler_compile`);
* `GenerateBackend`: HF `generate` with the constraints and the seeds' Gumbel noise as a logits processor (and no
  setting of the checkpoint's `generation_config.json`): the same latents as `DecodeLoop`, and the template for an
  engine of one's own;
* `gfn_trl.trainers.async_sampling`'s backend, which hands the trainer latents that sampler processes drew ahead.

Why another engine (TRL's vLLM generation, `trl.generation.vllm_generation.VLLMGeneration`) can be plugged in: a
GFlowNet objective is off-policy (any behaviour policy with full support gives valid training data; Hu et al. 2024
already train on tempered and replayed latents), and the loss recomputes log q(Z) by its own teacher-forced pass,
so a backend's numerics (other kernels, bf16, weights synchronised a step late) change the behaviour policy only.
What a backend must respect is the constrained policy's support (the vocabulary mask, min/max length, a tool's
forced tokens): a latent outside it would have log q = -inf in the loss, so `RolloutTrainer.sample` checks every
latent of a backend other than `DecodeLoop` with `check_latents`.  An adapter for vLLM would map the request to
vLLM's sampling parameters (`temperature`, `allowed_token_ids` from `constraints.allowed`, `min_tokens` /
`max_tokens`, the stop token; vLLM draws with its own seeds, so runs stop being bit-reproducible) and synchronise
weights when `request.step` changes (`VLLMGeneration.sync_weights`).  None ships: no test here could run it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor
from transformers import LogitsProcessor, LogitsProcessorList

from ..sampling import LatentConstraints, clean_generate, gumbel_noise, sample_latents


@dataclass
class GenerationRequest:
    """What a trainer asks its generation backend for: one latent per row.

    Attributes:
        rows: the tokenized dataset rows, one per latent (`prompt_ids`, `gfn_key`, ...; a prompt repeated
            `num_generations` times).
        prompt_ids, prompt_mask: (B, P) the policy prompts, left-padded, and their attention mask.
        temperature: the exploration temperature (> 0) dividing the constrained logits.
        seeds: B counter-based seeds in [0, 2^32) (`RolloutTrainer._key`), one per latent: a backend that honours
            them (Gumbel-max with `gfn_trl.sampling.gumbel_noise`) reproduces runs bit for bit.
        step: the optimizer step whose weights the policy holds (a backend with its own copy of the weights
            synchronises when it changes).
    """

    rows: list[dict]
    prompt_ids: Tensor
    prompt_mask: Tensor
    temperature: float
    seeds: list[int]
    step: int = 0


@runtime_checkable
class GenerationBackend(Protocol):
    """Anything with `generate(model, constraints, request) -> (z, lengths)`: z (B, T) latent token ids right-padded
    with the stop token (T <= constraints.max_length), lengths (B,) the number of tokens before the stop.  Called
    without gradients, with `model` (the unwrapped policy) in eval mode."""

    def generate(self, model, constraints: LatentConstraints, request: GenerationRequest) -> tuple[Tensor, Tensor]:
        ...


@dataclass
class DecodeLoop:
    """The default backend: `gfn_trl.sampling.sample_latents` (row-seeded Gumbel-max, our own KV-cache loop).

    Attributes:
        cache_implementation: `"dynamic"` or `"static"` (None: `"dynamic"`, or a `sampler_options` block in force).
        compile: compile the static loop's decode step (`torch.compile`; CUDA graphs on a GPU).
    """

    cache_implementation: str | None = None
    compile: bool = False

    def generate(self, model, constraints: LatentConstraints, request: GenerationRequest) -> tuple[Tensor, Tensor]:
        return sample_latents(model, request.prompt_ids, request.prompt_mask, constraints, request.temperature,
                              None, request.seeds, cache_implementation=self.cache_implementation,
                              compile=self.compile or None)


class _ConstrainedGumbel(LogitsProcessor):
    """`LatentConstraints.apply`, the temperature, then each row's Gumbel noise for the step: with greedy decoding,
    `generate` then picks the Gumbel-max token, as `sample_latents` does."""

    def __init__(self, constraints: LatentConstraints, prompt_width: int, temperature: float, seeds: Tensor):
        self.constraints, self.prompt_width = constraints, prompt_width
        self.temperature, self.seeds = temperature, seeds

    def __call__(self, input_ids: Tensor, scores: Tensor) -> Tensor:
        written = input_ids[:, self.prompt_width :]
        scores = self.constraints.apply_decoding(scores, written) / self.temperature
        return scores + gumbel_noise(self.seeds, written.shape[1], scores.shape[-1]).to(scores.dtype)


class GenerateBackend:
    """HF `generate` as the backend: the constraints and the row seeds' Gumbel noise in a logits processor, greedy
    decoding, nothing from the checkpoint's `generation_config.json` (`gfn_trl.sampling.clean_generate`).  Draws
    `DecodeLoop`'s latents; slower (`benchmarks/sampling.py`).  A template for wrapping another engine."""

    def generate(self, model, constraints: LatentConstraints, request: GenerationRequest) -> tuple[Tensor, Tensor]:
        ids, mask, stop = request.prompt_ids, request.prompt_mask, constraints.stop_token_id
        seeds = torch.as_tensor(request.seeds, dtype=torch.long, device=ids.device)
        processor = _ConstrainedGumbel(constraints, ids.shape[1], request.temperature, seeds)
        out = clean_generate(model, ids, mask, LogitsProcessorList([processor]), do_sample=False,
                             max_new_tokens=constraints.max_length + 1, eos_token_id=stop, pad_token_id=stop)
        new = out[:, ids.shape[1] :]
        lengths = (new == stop).long().argmax(1)  # every row stops (forced at max_length)
        z = new[:, : int(lengths.max()) if len(lengths) else 0].clone()
        z[torch.arange(z.shape[1], device=z.device)[None] >= lengths[:, None]] = stop
        return z, lengths


def check_latents(constraints: LatentConstraints, z: Tensor, lengths: Tensor, backend) -> None:
    """Raise if a backend returned latents the constrained policy cannot write (shape, length, vocabulary, a tool's
    outputs: `LatentConstraints.admits`), naming the first one.

    Raises:
        ValueError: malformed (z, lengths), or a latent outside the policy's support.
    """
    name = type(backend).__name__
    if z.dim() != 2 or lengths.dim() != 1 or z.shape[0] != lengths.shape[0]:
        raise ValueError(f"{name}.generate must return z (B, T) and lengths (B,), got {tuple(z.shape)} and "
                         f"{tuple(lengths.shape)}.")
    for b, n in enumerate(lengths.tolist()):
        latent = z[b, :n].tolist()
        if n > z.shape[1] or not constraints.admits(latent):
            raise ValueError(
                f"{name} returned latent {b} ({latent}, length {n}) that the constrained policy cannot write (min "
                f"length {constraints.min_length}, max length {constraints.max_length}, stop token "
                f"{constraints.stop_token_id}, the vocabulary mask, a tool's forced tokens): the loss would give it "
                "log q = -inf. Apply the latent's constraints in the backend."
            )
