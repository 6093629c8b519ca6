"""PPOConfig: the PPO baseline's settings (a `RolloutConfig`, and so a TRL config)."""

from __future__ import annotations

from dataclasses import dataclass, field

from .rollout_config import MIN_TEMPERATURE, RolloutConfig, _check_number


@dataclass
class PPOConfig(RolloutConfig):
    r"""
    Configuration for [`PPOTrainer`]: the paper's reward-maximising baseline.  PPO (Schulman et al., 2017) with a
    value head, generalised advantage estimation, the clipped surrogate, value clipping and a per-token KL penalty
    to the reference policy (the adapter-disabled base with PEFT), fixed or adaptive (Ziegler et al., 2019).  The
    latent, its constraints and the reward LM are those of [`GFlowNetTrainer`] ([`RolloutConfig`]); the reward is
    the final-state log R(Z) / `reward_temperature`, as in the paper's comparison.

    > Parameters that control the objective

    num_ppo_epochs (`int`, *optional*, defaults to `4`):
        Optimizer steps taken on each batch of rollouts before new ones are sampled (the first is on-policy).
    cliprange (`float`, *optional*, defaults to `0.2`):
        ε of the clipped surrogate: the probability ratio is clipped to [1 - ε, 1 + ε].
    cliprange_value (`float`, *optional*, defaults to `0.2`):
        Value predictions are clipped to within this distance of the rollout's values.
    vf_coef (`float`, *optional*, defaults to `0.1`):
        Weight of the value loss.
    gamma (`float`, *optional*, defaults to `1.0`):
        Discount factor.
    lam (`float`, *optional*, defaults to `0.95`):
        λ of generalised advantage estimation.
    whiten_advantages (`bool`, *optional*, defaults to `True`):
        Normalise the advantages of a micro-batch to mean 0 and variance 1.
    kl_coef (`float`, *optional*, defaults to `0.05`):
        β of the per-token penalty -β (log q(a|s) - log q_ref(a|s)) added to the reward (its start with `adaptive_kl`).
    adaptive_kl (`bool`, *optional*, defaults to `False`):
        Adapt β towards `kl_target` (Ziegler et al.'s proportional controller).
    kl_target (`float`, *optional*, defaults to `6.0`):
        Target KL per sequence of the adaptive controller.
    kl_horizon (`int`, *optional*, defaults to `10000`):
        Horizon (in sequences) of the adaptive controller.
    reward_temperature (`float`, *optional*, defaults to `1.0`):
        The reward is log R(Z) / `reward_temperature`; finite, >= 1e-6.
    value_learning_rate (`float`, *optional*, defaults to `1e-2`):
        Learning rate of the value head (a linear map of the policy's normalised, detached hidden states).
    sampling_temperature (`float`, *optional*, defaults to `1.0`):
        Temperature of the rollouts; finite, >= 1e-6.  PPO is on-policy: anything else biases the surrogate.
    """

    num_ppo_epochs: int = field(default=4, metadata={"help": "Optimizer steps taken on each batch of rollouts."})
    cliprange: float = field(default=0.2, metadata={"help": "Clip range of the probability ratio."})
    cliprange_value: float = field(default=0.2, metadata={"help": "Clip range of the value predictions."})
    vf_coef: float = field(default=0.1, metadata={"help": "Weight of the value loss."})
    gamma: float = field(default=1.0, metadata={"help": "Discount factor."})
    lam: float = field(default=0.95, metadata={"help": "Lambda of generalised advantage estimation."})
    whiten_advantages: bool = field(default=True, metadata={"help": "Normalise advantages per micro-batch."})
    kl_coef: float = field(default=0.05, metadata={"help": "Per-token KL penalty coefficient (initial if adaptive)."})
    adaptive_kl: bool = field(default=False, metadata={"help": "Adapt the KL coefficient towards kl_target."})
    kl_target: float = field(default=6.0, metadata={"help": "Target KL per sequence of the adaptive controller."})
    kl_horizon: int = field(default=10000, metadata={"help": "Horizon of the adaptive KL controller (sequences)."})
    reward_temperature: float = field(
        default=1.0, metadata={"help": "The reward is log R(Z) / reward_temperature; finite, >= 1e-6."}
    )
    value_learning_rate: float = field(default=1e-2, metadata={"help": "Learning rate of the value head."})
    sampling_temperature: float = field(
        default=1.0, metadata={"help": "Temperature of the rollouts; finite, >= 1e-6 (1: on-policy)."}
    )

    def __post_init__(self):
        super().__post_init__()
        _check_number(self, "num_ppo_epochs", 1, integer=True)
        _check_number(self, "cliprange", 0, low_open=True)
        _check_number(self, "cliprange_value", 0, low_open=True)
        _check_number(self, "vf_coef", 0)
        _check_number(self, "gamma")
        _check_number(self, "lam")
        if not (0 <= self.gamma <= 1 and 0 <= self.lam <= 1):
            raise ValueError(f"gamma and lam must lie in [0, 1], got {self.gamma} and {self.lam}.")
        _check_number(self, "kl_coef", 0)
        _check_number(self, "kl_target", 0, low_open=True)
        _check_number(self, "kl_horizon", 1, integer=True)
        _check_number(self, "reward_temperature", MIN_TEMPERATURE)
        _check_number(self, "value_learning_rate", 0)
        _check_number(self, "sampling_temperature", MIN_TEMPERATURE)
