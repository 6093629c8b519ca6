"""Sampling and scoring for evaluation, shared by every trainer: the same sampler, the same base-LM likelihood.

Every method (GFlowNet, PPO, SFT, the untuned prompt, decoding baselines) is scored by `sample_and_score` or, for
latents produced elsewhere, by `score_tokens` / `score_texts`: log R(Z⊤) untempered (a natural log, float), under
the frozen reward LM, on token ids (`gfn_trl.rewards.LikelihoodReward.final`).
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass

import torch

from ..models import eval_mode
from ..progress import progress
from ..rewards import LikelihoodReward
from ..sampling import LatentConstraints, counter_seed, latent_batch, left_pad, sample_latents
from ..tokenization import decode_continuations, encode_continuation


@dataclass
class Scored:
    """The samples of one evaluation row."""

    row: dict
    tokens: list[list[int]]  # latents, without the stop token
    texts: list[str]  # decoded latents, as they read after the prompt (`decode_continuations`)
    log_likelihood: list[float]  # untempered log R(Z⊤) under the base LM (empty: sampled without scoring)


def _seed(seed: int, i: int, j: int) -> int:
    return counter_seed("eval", seed, i, j)  # = zlib.crc32(f"eval:{seed}:{i}:{j}"), the seeds evaluations always had


@torch.no_grad()
def sample_and_score(
    policy,
    reward: LikelihoodReward | None,
    tokenizer,
    constraints: LatentConstraints,
    rows: list[dict],
    n_samples: int,
    temperature: float = 1.0,
    seed: int = 0,
    prompts_per_batch: int = 4,
    disable_adapter: bool = False,
) -> list[Scored]:
    """For each tokenized row, `n_samples` latents from `policy` (its adapter off with `disable_adapter`: the
    untuned prompt baseline), decoded and scored under the base LM.  Deterministic given `seed` (sample j of row i
    is seeded by `counter_seed("eval", seed, i, j)`).  The policy runs in eval mode and gets its training mode back
    (`gfn_trl.models.eval_mode`); a progress bar counts the prompts (`gfn_trl.progress`).

    Args:
        rows: rows of `gfn_trl.data.tokenize_dataset` (`prompt_ids`, and what the reward reads).
        constraints: the latent space; `temperature`: the sampling temperature (1: the policy itself).
        prompts_per_batch: rows sampled at once (`prompts_per_batch` × `n_samples` latents per pass).
        reward: the base-LM scorer; None: sample only (each `Scored.log_likelihood` is then empty), for a caller
            that scores the latents its own way (subjectivity's M-step and calibration compare two labels).

    Returns:
        one `Scored` per row, its `n_samples` latents in sampling order with their untempered log R(Z⊤).
    """
    device = next(policy.parameters()).device
    out = []
    with eval_mode(policy), progress(total=len(rows), desc="sampling and scoring", unit="prompt") as bar:
        for lo in range(0, len(rows), prompts_per_batch):
            chunk = rows[lo : lo + prompts_per_batch]
            expanded = [r for r in chunk for _ in range(n_samples)]
            seeds = [_seed(seed, lo + i // n_samples, i % n_samples) for i in range(len(expanded))]
            ids, mask = left_pad([r["prompt_ids"] for r in expanded], tokenizer.pad_token_id, device)
            ctx = policy.disable_adapter() if disable_adapter else nullcontext()
            with ctx:
                z, lengths = sample_latents(policy, ids, mask, constraints, temperature, tokenizer.pad_token_id,
                                            seeds)
            # log R(Z⊤), one suffix copy per row
            final = reward.final(expanded, z, lengths).tolist() if reward is not None else None
            for i, r in enumerate(chunk):
                sl = slice(i * n_samples, (i + 1) * n_samples)
                toks = [z[b, : int(lengths[b])].tolist() for b in range(sl.start, sl.stop)]
                scores = final[sl] if final is not None else []
                out.append(Scored(r, toks, decode_continuations(tokenizer, toks), scores))
            bar.update(len(chunk))
    return out


@torch.no_grad()
def score_tokens(reward: LikelihoodReward, tokenizer, rows: list[dict], latents: list[list[list[int]]]) -> list[Scored]:
    """Score latents given as token ids (e.g. from a decoding baseline), per row, under the base LM.

    `latents[i]`: the latents of `rows[i]` (token id lists without the stop token).  Returns one `Scored` per row,
    with the untempered log R(Z⊤) of each latent."""
    out = []
    for row, toks in zip(rows, latents):
        z, lengths = latent_batch(toks, reward.stop_token_id, reward.device)
        final = reward.final([row] * len(toks), z, lengths)
        out.append(Scored(row, [list(t) for t in toks], decode_continuations(tokenizer, toks), final.tolist()))
    return out


@torch.no_grad()
def score_texts(reward: LikelihoodReward, tokenizer, rows: list[dict], texts: list[list[str]]) -> list[Scored]:
    """Score latents given as text (e.g. a gold answer) under the base LM.  Each text is tokenized as a continuation
    (`gfn_trl.tokenization.encode_continuation`), so the scored sequence is the reward prompt, the text and the suffix
    with nothing added in between."""
    latents = [[encode_continuation(tokenizer, t) for t in cands] for cands in texts]
    scored = score_tokens(reward, tokenizer, rows, latents)
    for s, cands in zip(scored, texts):
        s.texts = list(cands)
    return scored


def likelihood_summary(scored: list[Scored]) -> dict[str, float]:
    """Mean over rows of the mean and of the max base-LM log-likelihood of the row's samples (the paper's
    'logP(s) avg / max')."""
    means = [sum(s.log_likelihood) / len(s.log_likelihood) for s in scored]
    maxes = [max(s.log_likelihood) for s in scored]
    return {"log_likelihood/mean": sum(means) / len(means), "log_likelihood/max": sum(maxes) / len(maxes)}
