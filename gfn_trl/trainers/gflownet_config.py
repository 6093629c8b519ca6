"""GFlowNetConfig: the GFlowNet trainer's settings (a `RolloutConfig`, and so a TRL config)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from transformers.utils import logging

from ..losses import MIN_LENGTH_MODES, OBJECTIVES, SHORT_STATE_LOG_REWARD, get_objective
from .rollout_config import MIN_TEMPERATURE, RolloutConfig, _check_number

logger = logging.get_logger(__name__)


@dataclass
class GFlowNetConfig(RolloutConfig):
    r"""
    Configuration for [`GFlowNetTrainer`]: GFlowNet fine-tuning of a causal LM (Hu et al., "Amortizing Intractable
    Inference in Large Language Models", ICLR 2024).  The defaults follow the paper's story-infilling run, except
    where noted.

    > Parameters that control the objective

    loss_type (`str`, *optional*, defaults to `"subtb"`):
        A registered objective (`gfn_trl.losses.OBJECTIVES`): `"subtb"`, the paper's modified SubTB (eq. 3);
        `"tb"`, trajectory balance (Malkin et al. 2022); `"db"`, modified DB (the length-1 windows of `"subtb"`).
    subtb_lambda (`float`, *optional*, defaults to `1.0`):
        Weight λ^(j-i-1) of a window (i, j) in the SubTB loss; > 0, with λ^(max_completion_length - 1) <= 1e37 (so
        that no weight overflows float32).  The paper uses 1 everywhere.
    log_z (`str`, *optional*, defaults to `"batch"`):
        How log Z (the flow of the empty latent, needed by TB, and by SubTB/DB when `min_completion_length > 0`:
        `Objective.needs_log_z`) is obtained: `"batch"`, a per-prompt estimate from the prompt's `num_generations`
        samples (VarGrad: Richter et al. 2020; Zhang et al. 2023); or `"learned"`, a linear head on the policy's
        hidden state at the last prompt token.
    log_z_learning_rate (`float`, *optional*, defaults to `1e-2`):
        Learning rate of the learned log Z head; >= 0.
    min_length_mode (`str`, *optional*, defaults to `"ban_stop"`):
        How the loss treats the states shorter than `min_completion_length`, where the sampler bans the stop (both
        modes sample the same way; `gfn_trl.losses` module docstring): `"ban_stop"`, the loss's policy is the sampled
        one (no stop there), s_0's flow is log Z (`log_z`) and windows at the other short states are skipped;
        `"penalize"`, the authors' code: those states get the log-reward `min_length_log_reward` (divided by T_R
        like every log-reward), the loss keeps the policy's unconstrained stop probability there and uses every
        window, with no log Z.  With `min_completion_length=0` there is no such state and the two modes are one (a
        warning says so).
    min_length_log_reward (`float` or `None`, *optional*, defaults to `-99.0`):
        Under `min_length_mode="penalize"`: the untempered log-reward of a state shorter than
        `min_completion_length` (the authors' -99); in [-1e6, 0].  None keeps the reward LM's own value there (the
        authors' subjectivity E-step, whose reward has no minimum length).  Unused under `"ban_stop"` (a value other
        than the default is then warned about).

    > Parameters that control exploration (the latent's constraints and the reward LM: [`RolloutConfig`])

    on_policy_prob (`float`, *optional*, defaults to `0.25`):
        Probability that a micro-batch is sampled from the policy at temperature 1.  The three behaviour
        probabilities (`on_policy_prob`, `tempered_prob`, `replay_prob`) lie in [0, 1] and must sum to 1.
    tempered_prob (`float`, *optional*, defaults to `0.5`):
        Probability that a micro-batch is sampled at a temperature drawn from U[`sampling_temperature_min`,
        `sampling_temperature_max`].
    replay_prob (`float`, *optional*, defaults to `0.25`):
        Probability that a micro-batch is drawn from the replay buffer (tempered sampling when a prompt has none).
    sampling_temperature_min (`float`, *optional*, defaults to `0.5`):
        Lower end of the exploration temperature range; finite, >= 1e-6.
    sampling_temperature_max (`float`, *optional*, defaults to `2.0`):
        Upper end of the exploration temperature range; finite, >= `sampling_temperature_min`.

    > Parameters that control the reward

    The log-reward itself is set by [`RolloutConfig`]'s `lm_reward_weight` (α) and `reward_weights` (w_i, for the
    trainer's `reward_funcs`): log R(Z) = [α · log p_LM(Z [Y] | reward_prompt) + Σ_i w_i · r_i(Z)] / T_R, the paper's
    reward with α = 1 and no functions.

    reward_temperature_start (`float`, *optional*, defaults to `1.1`):
        Reward temperature T_R at step 0 (log R is divided by T_R); finite, >= 1e-6.
    reward_temperature_end (`float`, *optional*, defaults to `0.85`):
        Reward temperature after `reward_temperature_horizon` optimizer steps (linear in between); finite, >= 1e-6.
    reward_temperature_horizon (`int`, *optional*, defaults to `100`):
        Optimizer steps over which T_R moves from start to end; >= 0 (0: `reward_temperature_end` throughout).

    > Parameters that control the replay buffer

    replay_buffer_size (`int`, *optional*, defaults to `50`):
        Latents kept per prompt (the highest-reward distinct ones); >= 1.  On resume the current value applies.
    replay_prioritized (`bool`, *optional*, defaults to `True`):
        Sample replayed latents with probability ∝ R (untempered) rather than uniformly.  On resume the current value
        applies.
    replay_sim_tolerance (`float`, *optional*, defaults to `0.0`):
        Latents within token edit distance `tol * (len_a + len_b)` count as duplicates (0: exact duplicates only;
        the paper used 0.25); in [0, 0.5).  On resume the current value applies (the buffer is rebuilt).
    """

    # Objective
    loss_type: str = field(
        default="subtb",
        metadata={"help": "Loss: "
                  + ", ".join(f"'{o.name}' ({o.summary})" for o in OBJECTIVES.values()) + "."},
    )
    subtb_lambda: float = field(
        default=1.0,
        metadata={"help": "Window weight lambda^(j-i-1) in SubTB; > 0, with lambda^(max_completion_length - 1) <= "
                  "1e37 (so that no weight overflows float32). 1 in the paper."},
    )
    log_z: str = field(
        default="batch",
        metadata={"help": "log Z source when needed: 'batch' (per-prompt VarGrad estimate) or 'learned' (a head)."},
    )
    log_z_learning_rate: float = field(
        default=1e-2, metadata={"help": "Learning rate of the learned log Z head; >= 0."}
    )
    min_length_mode: str = field(
        default="ban_stop",
        metadata={"help": "States shorter than min_completion_length (the sampler bans the stop there in both modes): "
                  "'ban_stop' (the loss's policy is the sampled one, s_0's flow is log Z, windows at the other short "
                  "states skipped) or 'penalize' (the authors' code: those states get min_length_log_reward / T_R, "
                  "the loss keeps the unconstrained stop probability there and uses every window, no log Z)."},
    )
    min_length_log_reward: float | None = field(
        default=SHORT_STATE_LOG_REWARD,
        metadata={"help": "With min_length_mode='penalize': the untempered log-reward of a state shorter than "
                  "min_completion_length (the authors' -99); in [-1e6, 0]. None (null in YAML) keeps the reward LM's "
                  "value (the authors' subjectivity E-step)."},
    )

    # Exploration
    on_policy_prob: float = field(
        default=0.25,
        metadata={"help": "Probability of sampling a batch at temperature 1. The three behaviour probabilities "
                  "(on_policy, tempered, replay) lie in [0, 1] and must sum to 1."},
    )
    tempered_prob: float = field(
        default=0.5, metadata={"help": "Probability of sampling a batch at a temperature from U[min, max]."}
    )
    replay_prob: float = field(
        default=0.25, metadata={"help": "Probability of drawing a batch from the replay buffer."}
    )
    sampling_temperature_min: float = field(
        default=0.5, metadata={"help": "Lowest exploration temperature; finite, >= 1e-6."}
    )
    sampling_temperature_max: float = field(
        default=2.0, metadata={"help": "Highest exploration temperature; finite, >= the lowest."}
    )

    # Reward
    reward_temperature_start: float = field(
        default=1.1, metadata={"help": "Reward temperature T_R at step 0; finite, >= 1e-6."}
    )
    reward_temperature_end: float = field(
        default=0.85, metadata={"help": "Reward temperature after the horizon; finite, >= 1e-6."}
    )
    reward_temperature_horizon: int = field(
        default=100,
        metadata={"help": "Optimizer steps over which T_R moves linearly from start to end; >= 0 (0: the end "
                  "temperature throughout)."},
    )

    # Replay
    replay_buffer_size: int = field(
        default=50,
        metadata={"help": "Latents kept per prompt in the replay buffer; >= 1. On resume the current value applies."},
    )
    replay_prioritized: bool = field(
        default=True,
        metadata={"help": "Sample replayed latents with probability ∝ R. On resume the current value applies."},
    )
    replay_sim_tolerance: float = field(
        default=0.0,
        metadata={"help": "Edit-distance tolerance for duplicates (0: exact duplicates only); in [0, 0.5). On "
                  "resume the current value applies."},
    )

    def __post_init__(self):
        super().__post_init__()
        objective = get_objective(self.loss_type)  # raises naming the registered objectives
        if self.log_z not in ("batch", "learned"):
            raise ValueError(f"log_z must be 'batch' or 'learned', got {self.log_z!r}.")
        if self.min_length_mode not in MIN_LENGTH_MODES:
            raise ValueError(f"min_length_mode must be 'ban_stop' (ours) or 'penalize' (the authors' code), got "
                             f"{self.min_length_mode!r}.")
        _check_number(self, "min_length_log_reward", -1e6, 0, optional=True, why=" It replaces the log-reward of "
                      "states shorter than min_completion_length (the authors: -99); beyond -1e6, log R / T_R "
                      "overflows float32 in the loss. None keeps the reward LM's value.")
        # settings that would change nothing: said, not silently ignored
        if self.min_length_mode == "penalize" and self.min_completion_length == 0:
            logger.warning("min_length_mode='penalize' changes nothing with min_completion_length=0: no state is "
                           "shorter than the minimum, so the run trains what 'ban_stop' trains (and "
                           "min_length_log_reward is unused). Set min_completion_length > 0 for the authors' "
                           "construction.")
        elif self.min_length_mode == "ban_stop" and self.min_length_log_reward != SHORT_STATE_LOG_REWARD:
            logger.warning(f"min_length_log_reward={self.min_length_log_reward} is unused: it is the log-reward of the "
                           "states below the minimum length under min_length_mode='penalize' only, and this run uses "
                           "'ban_stop'. Set min_length_mode='penalize' to use it.")
        needs_log_z = objective.needs_log_z(self.loss_min_length())
        if needs_log_z and self.log_z == "batch" and self.num_generations < 2:
            raise ValueError(
                "log_z='batch' estimates log Z from the samples of one prompt, so it needs num_generations >= 2. "
                "Raise num_generations, use log_z='learned', or (for subtb/db) set min_completion_length=0 or "
                "min_length_mode='penalize'."
            )
        _check_number(self, "subtb_lambda", 0, low_open=True)
        if (self.max_completion_length - 1) * math.log10(self.subtb_lambda) > 37:
            raise ValueError(
                f"subtb_lambda={self.subtb_lambda} is too large for max_completion_length={self.max_completion_length}:"
                " the weight lambda^(n-1) of the longest window overflows float32 (need lambda^(max_completion_length"
                " - 1) <= 1e37)."
            )
        _check_number(self, "log_z_learning_rate", 0)
        for name in ("on_policy_prob", "tempered_prob", "replay_prob"):
            _check_number(self, name, 0, 1)
        probs = (self.on_policy_prob, self.tempered_prob, self.replay_prob)
        if abs(sum(probs) - 1) > 1e-6:
            raise ValueError(
                f"on_policy_prob, tempered_prob and replay_prob are the probabilities of the three behaviours, so they "
                f"must sum to 1 (and not all 0), got {probs} (sum {sum(probs):g}). E.g. the paper's 0.25, 0.5, 0.25."
            )
        _check_number(self, "sampling_temperature_min", MIN_TEMPERATURE)
        _check_number(self, "sampling_temperature_max", MIN_TEMPERATURE)
        if self.sampling_temperature_min > self.sampling_temperature_max:
            raise ValueError(
                "Need 0 < sampling_temperature_min <= sampling_temperature_max, got "
                f"{self.sampling_temperature_min} and {self.sampling_temperature_max}."
            )
        _check_number(self, "reward_temperature_start", MIN_TEMPERATURE)
        _check_number(self, "reward_temperature_end", MIN_TEMPERATURE)
        _check_number(self, "reward_temperature_horizon", 0, integer=True)
        _check_number(self, "replay_buffer_size", 1, integer=True)
        _check_number(self, "replay_sim_tolerance", 0, 0.5, high_open=True, why=" From 0.5 on, any two latents count "
                      "as duplicates (their edit distance never exceeds the longer length).")

    def loss_min_length(self) -> int:
        """The minimum length of the policy in the loss: `min_completion_length` under `min_length_mode="ban_stop"`,
        0 under `"penalize"` (the loss keeps the unconstrained stop below the sampler's minimum)."""
        return 0 if self.min_length_mode == "penalize" else self.min_completion_length

    def reward_temperature(self, step: int) -> float:
        """T_R after `step` optimizer steps: linear from start to end over the horizon, then constant."""
        if self.reward_temperature_horizon <= 0:
            return self.reward_temperature_end
        frac = min(1.0, step / self.reward_temperature_horizon)
        return self.reward_temperature_start + frac * (self.reward_temperature_end - self.reward_temperature_start)
