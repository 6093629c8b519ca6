"""Per-prefix log-rewards from a frozen causal LM (see `gfn_trl.rewards.likelihood`).

    likelihood   the public reward: `LikelihoodReward`, `prefix_log_rewards`, `final_log_rewards`
    packed       the packed-attention engine (a few shared passes for every prefix)
    capability   which architectures packing is exact for; how to call a forward (cache argument, output layer)
    reference    ordinary-pass implementations: the reference for tests and the fallback
"""

from .likelihood import LikelihoodReward, final_log_rewards, prefix_log_rewards
from .reference import stop_log_rewards_plain, suffix_log_rewards_naive

__all__ = [
    "LikelihoodReward",
    "final_log_rewards",
    "prefix_log_rewards",
    "stop_log_rewards_plain",
    "suffix_log_rewards_naive",
]
