"""Decoding baselines on the GFlowNet's latent space: constrained greedy, beam, diverse beam, nucleus, ancestral and
tempered sampling (the paper's sentence-continuation baselines).

Every decoder stays inside the same latent space as the GFlowNet: `LatentConstraints.apply` (vocabulary mask, no
stop before `min_length`, stop forced at `max_length`) runs inside HF `generate` (`_ConstrainedLogProbs`, on a clean
generation config: `gfn_trl.sampling.clean_generate`), in our own beam search, or in the library's sampler.  The
latents returned are token ids without the stop token; score them with `gfn_trl.evaluation.score_tokens`.

Dimension legend: B rows, R live beams, V vocabulary.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import LogitsProcessor, LogitsProcessorList

from ..models import CACHE_KWARGS, cache_kwarg, eval_mode
from ..progress import progress
from ..sampling import LatentConstraints, clean_generate, counter_seed, left_pad, sample_latents
from ..trainers.trl_baselines import completion_to_latent


class _ConstrainedLogProbs(LogitsProcessor):
    """Inside `generate`: the constrained policy's log-probabilities, log softmax(LatentConstraints.apply(logits)).

    Renormalising changes nothing for greedy or sampling (a shift of the logits) and makes HF's nucleus filter see
    the constrained distribution; it runs before HF's own temperature / top-k / top-p warpers."""

    def __init__(self, constraints: LatentConstraints, prompt_width: int):
        self.constraints, self.prompt_width = constraints, prompt_width

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        return torch.log_softmax(self.constraints.apply_decoding(scores, input_ids[:, self.prompt_width :]), dim=-1)


@torch.no_grad()
def _generate(model, prompts: list[list[int]], constraints, pad_id, **config) -> list[list[int]]:
    """HF `generate` under the constraints (left-padded batch) with the settings `config` and no others (not the
    checkpoint's: `clean_generate`); the latents, cut at the first stop."""
    device = next(model.parameters()).device
    ids, mask = left_pad(prompts, pad_id, device)
    stop = constraints.stop_token_id
    out = clean_generate(  # only the processors asked for here: none of the checkpoint's generation_config
        model, ids, mask, LogitsProcessorList([_ConstrainedLogProbs(constraints, ids.shape[1])]),
        max_new_tokens=constraints.max_length + 1, eos_token_id=stop, pad_token_id=pad_id, use_cache=True, **config,
    )
    return [completion_to_latent(row, constraints) for row in out[:, ids.shape[1] :].tolist()]


@dataclass
class _Beam:
    group: int
    tokens: list[int]
    score: float  # Σ constrained log q, minus the diversity penalties along the way
    row: int  # the row of the model's last logits / KV cache that continues this beam


@torch.no_grad()
def beam_search(
    model,
    prompt_ids: list[int],
    constraints: LatentConstraints,
    num_beams: int,
    num_return: int,
    num_groups: int = 1,
    diversity_penalty: float = 0.0,
) -> list[list[int]]:
    """Beam search over the constrained policy, or diverse (group) beam search (Vijayakumar et al., 2016).

    A beam's score is the constrained log q(Z ⊤) (no length penalty: HF's `length_penalty=0`), minus, with groups,
    `diversity_penalty` × (how many earlier groups chose the same token at the same step) at every step (the
    Hamming diversity of HF's former group beam search, accumulated into the score as HF did).  Each group keeps
    `num_beams // num_groups` beams; a stop among a group's top-k candidates finishes a hypothesis; a group is done
    when it holds k hypotheses no live beam can beat.  All groups' hypotheses are pooled and the best `num_return`
    returned (fewer if the constrained space has fewer latents).  Candidates with probability 0 under the
    constraints are never kept, so every returned latent is in the latent space (HF's beam search keeps -inf beams
    when the beam is wider than the constrained support).  One prompt at a time, with the KV cache.

    Args:
        prompt_ids: one prompt's token ids.
        num_beams, num_groups: beams in all and groups (`num_beams` a multiple of `num_groups`).
        num_return: how many latents to return.
        diversity_penalty: the Hamming diversity weight, in log-probability units (natural log).

    Returns: up to `num_return` distinct latents (token ids, no stop), best first.

    Raises:
        ValueError: `num_beams` is not a multiple of `num_groups`.
    """
    if num_beams % num_groups:
        raise ValueError(f"num_beams ({num_beams}) must be a multiple of num_groups ({num_groups}).")
    k = num_beams // num_groups
    stop = constraints.stop_token_id
    device = next(model.parameters()).device
    hf = model.get_base_model() if hasattr(model, "get_base_model") else model  # the transformers model under PEFT
    cache_arg = cache_kwarg(hf.forward)  # `cache` in recent transformers (`past_key_values` is deprecated there)

    def _cache(out):
        return next(getattr(out, n) for n in CACHE_KWARGS if getattr(out, n, None) is not None)

    with eval_mode(model):  # no dropout; the training mode comes back afterwards
        ids = torch.tensor([prompt_ids], device=device)
        out = model(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=True)
        cache, logits = _cache(out), out.logits[:, -1].float()  # (R, V), one row per live beam
        live = [_Beam(g, [], 0.0, 0) for g in range(num_groups)]
        finished: list[list[tuple[float, list[int]]]] = [[] for _ in range(num_groups)]
        for step in range(constraints.max_length + 1):
            prefix = {b.row: b.tokens for b in live}  # the latent that each row of `logits` continues
            forced = constraints.forced_next([prefix[r] for r in range(logits.shape[0])], device)
            logp = torch.log_softmax(constraints.apply(logits, step, forced), dim=-1)  # (R, V)
            chosen = torch.zeros(logp.shape[-1], device=device)  # tokens taken at this step by earlier groups
            next_live: list[_Beam] = []
            for g in range(num_groups):
                beams = [b for b in live if b.group == g]
                if not beams:
                    continue
                rows = torch.tensor([b.row for b in beams], device=device)
                scores = torch.tensor([b.score for b in beams], device=device)
                cand = scores[:, None] + logp[rows] - diversity_penalty * chosen[None, :]  # (nb, V)
                top = cand.flatten().topk(min(2 * k, cand.numel()))
                kept: list[_Beam] = []
                for rank, (value, index) in enumerate(zip(top.values.tolist(), top.indices.tolist())):
                    if value == float("-inf") or len(kept) == k:
                        break
                    parent, token = divmod(index, logp.shape[-1])
                    if token == stop:
                        if rank < k:
                            finished[g].append((value, beams[parent].tokens))
                    else:
                        kept.append(_Beam(g, beams[parent].tokens + [token], value, beams[parent].row))
                finished[g] = sorted(finished[g], key=lambda h: -h[0])[:k]
                # scores only decrease, so a group holding k hypotheses better than its best live beam is done
                if len(finished[g]) == k and (not kept or max(b.score for b in kept) <= finished[g][-1][0]):
                    kept = []
                for b in kept:
                    chosen[b.tokens[-1]] += 1
                next_live += kept
            if not next_live:
                break
            cache.reorder_cache(torch.tensor([b.row for b in next_live], device=device))
            tokens = torch.tensor([[b.tokens[-1]] for b in next_live], device=device)
            mask = torch.ones(len(next_live), len(prompt_ids) + step + 1, dtype=torch.long, device=device)
            out = model(input_ids=tokens, attention_mask=mask, use_cache=True, **{cache_arg: cache})
            cache, logits = _cache(out), out.logits[:, -1].float()
            live = [_Beam(b.group, b.tokens, b.score, r) for r, b in enumerate(next_live)]
    pool = sorted((h for group in finished for h in group), key=lambda h: -h[0])
    return [tokens for _, tokens in pool[:num_return]]


DECODING_METHODS = (
    "greedy",
    "sample",
    "tempered",
    "nucleus",
    "beam",
    "beam_5x",
    "diverse_beam",
    "diverse_beam_5x",
)


@torch.no_grad()
def decode(
    model,
    tokenizer,
    prompt_ids_list: list[list[int]],
    method: str,
    n: int,
    constraints: LatentConstraints,
    temperature: float = 1.0,
    top_p: float = 0.95,
    diversity_penalty: float = 1.0,
    compute_factor: int = 5,
    seed: int = 0,
    batch_size: int = 8,
) -> list[list[list[int]]]:
    """n latents per prompt from a decoding method, every one inside the constrained latent space.

    Methods (the sentence-continuation baselines of Hu et al. 2024, §4.1):

    * `greedy`: the constrained argmax path, repeated n times (one latent; diversity 0).
    * `sample`: ancestral sampling of the constrained policy (`sample_latents`, counter-based seeds).
    * `tempered`: the same at `temperature`.
    * `nucleus`: HF top-p sampling (p = `top_p`) of the constrained distribution (RNG seeded by `seed`).
    * `beam`: beam search with n beams, the n best (`beam_search`, no length penalty).
    * `beam_5x`: `compute_factor` × n beams, the n best ("5× the compute").
    * `diverse_beam`: n beams in n groups with Hamming diversity `diversity_penalty`, the n best.
    * `diverse_beam_5x`: `compute_factor` × n beams in n groups, the n best.

    (The authors' code returns one beam sequence repeated n times; here every beam method returns its n best.)

    Args:
        model: the LM (e.g. the base LM, or a PEFT policy with its adapter disabled by the caller).
        prompt_ids_list: tokenized prompts (e.g. rows' `prompt_ids` from `tokenize_dataset`).
        temperature: the `tempered` method's sampling temperature (the others sample at 1).
        seed: seeds `sample`, `tempered` (sample j of prompt i: `counter_seed("decode", seed, i, j)`) and
            `nucleus` (torch's RNG, forked).
        batch_size: prompts per `generate` / sampler call (beam methods take one prompt at a time).
    Returns: per prompt, a list of n latents (token id lists without the stop), fewer only if a beam method finds
        fewer than n latents in the whole space.

    Raises:
        ValueError: an unknown `method`.
    """
    if method not in DECODING_METHODS:
        raise ValueError(f"Unknown decoding method {method!r}; choose from {DECODING_METHODS}.")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else constraints.stop_token_id
    out: list[list[list[int]]] = []
    bar = progress(total=len(prompt_ids_list), desc=f"decoding ({method})", unit="prompt")
    with eval_mode(model), bar:
        if method.startswith(("beam", "diverse_beam")):
            beams = n * (compute_factor if method.endswith("_5x") else 1)
            groups = n if method.startswith("diverse") else 1
            penalty = diversity_penalty if method.startswith("diverse") else 0.0
            for p in prompt_ids_list:
                out.append(beam_search(model, p, constraints, beams, n, groups, penalty))
                bar.update(1)
        elif method == "greedy":
            for lo in range(0, len(prompt_ids_list), batch_size):
                latents = _generate(model, prompt_ids_list[lo : lo + batch_size], constraints, pad, do_sample=False)
                out += [[z] * n for z in latents]
                bar.update(len(latents))
        elif method == "nucleus":
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                for lo in range(0, len(prompt_ids_list), batch_size):
                    chunk = [p for p in prompt_ids_list[lo : lo + batch_size] for _ in range(n)]
                    latents = _generate(
                        model, chunk, constraints, pad, do_sample=True, temperature=1.0, top_k=0, top_p=top_p
                    )
                    out += [latents[i : i + n] for i in range(0, len(latents), n)]
                    bar.update(len(chunk) // n)
        else:  # sample / tempered: the library's sampler, row seeds a function of (seed, prompt, sample)
            t = temperature if method == "tempered" else 1.0
            device = next(model.parameters()).device
            for lo in range(0, len(prompt_ids_list), batch_size):
                chunk = prompt_ids_list[lo : lo + batch_size]
                ids, mask = left_pad([p for p in chunk for _ in range(n)], pad, device)
                # = zlib.crc32(f"decode:{seed}:{prompt}:{sample}"), the seeds this baseline always drew
                seeds = [counter_seed("decode", seed, lo + i // n, i % n) for i in range(len(chunk) * n)]
                z, lengths = sample_latents(model, ids, mask, constraints, t, pad, seeds)
                latents = [z[b, : int(lengths[b])].tolist() for b in range(z.shape[0])]
                out += [latents[i : i + n] for i in range(0, len(latents), n)]
                bar.update(len(chunk))
    return out


__all__ = ["DECODING_METHODS", "beam_search", "decode"]
