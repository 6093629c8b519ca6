"""Moved to `gfn_trl.evaluation.exact`; kept so old imports work."""

from .evaluation.exact import enumerate_latents, exact_log_rewards, exact_policy_log_probs, tv_and_kl

__all__ = ["enumerate_latents", "exact_log_rewards", "exact_policy_log_probs", "tv_and_kl"]
