"""Per-prefix log-rewards from a frozen causal LM (see `gfn_trl.rewards.likelihood`).

    likelihood   the public reward: `LikelihoodReward`, `prefix_log_rewards`, `final_log_rewards`
    packed       the packed-attention engine (a few shared passes for every prefix)
    capability   which architectures packing is exact for; how to call a forward (cache argument, output layer)
    reference    ordinary-pass implementations: the reference for tests and the fallback
    functions    reward functions in TRL's signature (`reward_funcs`) and the tilted log-reward
                 α · log p_LM + Σ_i w_i r_i they make with the LM prior
"""

from .functions import RewardFunctions, tilted_log_rewards
from .likelihood import LikelihoodReward, final_log_rewards, prefix_log_rewards
from .reference import stop_log_rewards_plain, suffix_log_rewards_naive

__all__ = [
    "LikelihoodReward",
    "RewardFunctions",
    "final_log_rewards",
    "prefix_log_rewards",
    "stop_log_rewards_plain",
    "suffix_log_rewards_naive",
    "tilted_log_rewards",
]
