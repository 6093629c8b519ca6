"""Evaluation on the GFlowNet's terms: one sampler and one base-LM likelihood for every method.

    scoring        sample and score latents under the frozen reward LM (`Scored`, `sample_and_score`, ...)
    decoding       decoding baselines: constrained greedy, beam, diverse beam, nucleus, sampling
    text_metrics   the paper's text metrics: diversity, BLEU-4 / GLEU-4 / BERTScore, majority vote
    exact          exact distributions over short latents, by enumeration (tests and benchmarks)
"""

from .scoring import Scored, likelihood_summary, sample_and_score, score_texts, score_tokens

__all__ = ["Scored", "likelihood_summary", "sample_and_score", "score_texts", "score_tokens"]
