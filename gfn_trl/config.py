"""GFlowNetConfig: the trainer's settings, a TRL config (and so a `transformers.TrainingArguments`)."""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from typing import Any

import torch
from trl.trainer.base_config import _BaseConfig


def resolve_bf16(config) -> None:
    """Fill an unset (None) `bf16`: on only on a CUDA device that supports it (TRL's own default, on everywhere, would
    autocast CPU runs behind the user's back).  Under DeepSpeed, which refuses arguments that disagree with its
    config ("ds bf16.enabled=True vs hf bf16=False"), it follows `accelerate launch`'s mixed_precision instead: on
    for bf16 (every GPU config in accelerate_configs/) and fp8 (which DeepSpeed runs in bf16), off otherwise."""
    if config.bf16 is not None:
        return
    on = bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported()) and not config.fp16
    if os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true":
        on = on and os.environ.get("ACCELERATE_MIXED_PRECISION", "no").lower() in ("bf16", "fp8")
    config.bf16 = on


# Temperatures below this make log R / T_R or logits / T overflow float32 (in the squared SubTB residuals, or the
# sampler's scaled logits) for log-likelihoods of ordinary size.
MIN_TEMPERATURE = 1e-6


def _check_number(config, name: str, low: float | None = None, high: float | None = None, *, low_open: bool = False,
                  high_open: bool = False, integer: bool = False, optional: bool = False, why: str = "") -> None:
    """Raise a ValueError naming `name` unless `config.name` is a finite number in the given range (ints for
    `integer`; None allowed for `optional`).  NaN and ±inf never pass: every comparison with NaN is False, so a
    plain range check would let it through."""
    value = getattr(config, name)
    if value is None and optional:
        return
    if integer:
        ok_type = isinstance(value, int) and not isinstance(value, bool)
    else:
        ok_type = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not ok_type or not math.isfinite(value):
        kind = "an integer" if integer else "a finite number"
        raise ValueError(f"{name} must be {kind}{' or unset' if optional else ''}, got {value!r}.{why}")
    too_low = low is not None and (value <= low if low_open else value < low)
    too_high = high is not None and (value >= high if high_open else value > high)
    if too_low or too_high:
        lo = "" if low is None else f"{'(' if low_open else '['}{low}, "
        hi = "∞)" if high is None else f"{high}{')' if high_open else ']'}"
        domain = (lo or "(-∞, ") + hi
        raise ValueError(f"{name} must lie in {domain}, got {value!r}.{why}")


@dataclass
class RolloutConfig(_BaseConfig):
    r"""
    Settings shared by every gfn_trl trainer that samples latents from the policy and scores them with the frozen
    LM's likelihood ([`GFlowNetTrainer`], [`PPOTrainer`]): the latent's constraints, the reward LM, and the training
    defaults of the paper.

    > Parameters that control the latent and its sampling

    max_completion_length (`int`, *optional*, defaults to `25`):
        Maximum number of latent tokens; the stop action is forced at this length (in sampling and in the loss).
    min_completion_length (`int`, *optional*, defaults to `1`):
        Minimum number of latent tokens; the stop action is banned below it (in sampling and in the loss).
    stop_token (`str`, *optional*):
        The token that ends the latent, ⊤.  Defaults to the tokenizer's EOS token.  Must encode to one token.
    num_generations (`int`, *optional*, defaults to `8`):
        Latents sampled per prompt in each micro-batch (`per_device_train_batch_size` counts prompts).

    > Parameters that control the reward

    reward_model_name_or_path (`str`, *optional*):
        A separate frozen reward LM (hub id or path; must share the policy's tokenizer).  By default the reward is
        the policy's base model with the LoRA adapter disabled (no second copy of the weights).
    reward_model_quantization (`str`, *optional*):
        `"8bit"` or `"4bit"`: load the separate reward LM (`reward_model_name_or_path`) quantized with bitsandbytes,
        on this process's device and outside the DeepSpeed/FSDP engine.  Needs `pip install bitsandbytes` (its CPU
        backend works too, for tests).
    load_in_4bit (`bool`, *optional*, defaults to `False`):
        QLoRA policy: load the model (given by name) with 4-bit NF4 weights (bitsandbytes) and train a LoRA adapter
        on them; needs `peft_config`.  The default reward, the adapter-disabled base, is then the 4-bit model too.
    reward_chunk_size (`int`, *optional*):
        Rows scored at once by the reward LM (bounds the memory of its logits); >= 1.  Defaults to the whole batch.
    contrast_penalty (`float`, *optional*, defaults to `-50.0`):
        Added to the untempered log R of every prefix after which a row's `contrast_suffix` column (e.g. the wrong
        label) is more likely than its `suffix`; in [-1e6, 0].  The paper's subjectivity reward; no effect without
        the column.

    > Other parameters

    disable_dropout (`bool`, *optional*, defaults to `True`):
        Turn dropout off in the policy, so that the teacher-forced log-probabilities are those of the sampler.
    model_init_kwargs (`dict`, *optional*):
        Keyword arguments for `from_pretrained` when `model` is a string (e.g. `{"dtype": "bfloat16"}` or
        `{"gguf_file": "model.gguf"}`); a dict or a JSON object string.
    chat_template_kwargs (`dict`, *optional*):
        Keyword arguments for the tokenizer's chat template when a `prompt` or `reward_prompt` is a conversation (a
        list of `{"role", "content"}` messages), as in TRL's GRPO (e.g. `{"enable_thinking": False}`).
    overwrite_output_dir (`bool`, *optional*, defaults to `False`):
        Let a fresh run (no `resume_from_checkpoint`) start in an `output_dir` that holds `checkpoint-N` folders: they
        are deleted when training starts.  Without it such a run is refused, so that two runs' checkpoints never mix;
        pass `resume_from_checkpoint=True` to continue the old run instead.
    """

    _VALID_DICT_FIELDS = _BaseConfig._VALID_DICT_FIELDS + ["model_init_kwargs", "chat_template_kwargs"]

    # Overridden defaults
    learning_rate: float = field(default=1e-4, metadata={"help": "The initial learning rate for AdamW."})
    lr_scheduler_type: str = field(
        default="constant_with_warmup",
        metadata={"help": "The scheduler type to use. The paper warms up linearly, then keeps the rate constant."},
    )
    warmup_steps: float = field(default=20, metadata={"help": "Linear warm-up steps (the paper uses 20)."})
    remove_unused_columns: bool = field(
        default=False, metadata={"help": "Keep dataset columns: the trainer reads prompt, reward_prompt and suffix."}
    )
    gradient_checkpointing: bool | None = field(
        default=None,
        metadata={"help": "Deprecated alias of activation_checkpointing (off by default here, as in the paper)."},
    )
    bf16: bool | None = field(
        default=None,
        metadata={"help": "Use bf16 mixed precision. Unset: on only on a CUDA device that supports it (under "
                  "DeepSpeed, only if `accelerate launch` also says bf16)."},
    )

    # Latent and sampling
    max_completion_length: int = field(
        default=25, metadata={"help": "Maximum latent tokens; the stop is forced there."}
    )
    min_completion_length: int = field(default=1, metadata={"help": "Minimum latent tokens; no stop below it."})
    stop_token: str | None = field(
        default=None, metadata={"help": "Token that ends the latent (default: the tokenizer's EOS). One token."}
    )
    num_generations: int = field(default=8, metadata={"help": "Latents sampled per prompt in each micro-batch."})

    # Reward
    reward_model_name_or_path: str | None = field(
        default=None,
        metadata={"help": "Separate frozen reward LM. Default: the policy's base with the LoRA adapter disabled."},
    )
    reward_chunk_size: int | None = field(
        default=None, metadata={"help": "Rows scored at once by the reward LM; >= 1. Default: the whole batch."}
    )
    reward_model_quantization: str | None = field(
        default=None,
        metadata={"help": "Load the separate reward LM in '8bit' or '4bit' (bitsandbytes), outside any "
                  "DeepSpeed/FSDP engine."},
    )
    load_in_4bit: bool = field(
        default=False,
        metadata={"help": "QLoRA: load the policy's base with 4-bit NF4 weights (bitsandbytes) and train LoRA on it."},
    )
    contrast_penalty: float = field(
        default=-50.0,
        metadata={"help": "Added to the untempered log R of a prefix after which the row's contrast_suffix (e.g. the "
                  "wrong label) is more likely than its suffix; in [-1e6, 0]. -50 in the paper's subjectivity task."},
    )

    # Other
    disable_dropout: bool = field(default=True, metadata={"help": "Turn the policy's dropout off."})
    model_init_kwargs: dict[str, Any] | str | None = field(
        default=None,
        metadata={"help": "Keyword arguments for from_pretrained when the model is given by name; a dict or a JSON "
                  "object string."},
    )
    chat_template_kwargs: dict[str, Any] | str | None = field(
        default=None,
        metadata={"help": "Keyword arguments for the tokenizer's chat template when a prompt or reward_prompt is a "
                  "conversation (a list of {'role', 'content'} messages), as in TRL's GRPO."},
    )
    overwrite_output_dir: bool = field(
        default=False,
        metadata={"help": "Let a fresh run start in an output_dir holding checkpoint-N folders: they are deleted when "
                  "training starts. Without it such a run is refused, so that two runs' checkpoints never mix; pass "
                  "resume_from_checkpoint=True to continue the old run instead."},
    )

    def __post_init__(self):
        # Parsed here, before TrainingArguments' own parser (which would raise a bare JSONDecodeError)
        for name in ("model_init_kwargs", "chat_template_kwargs"):
            value = getattr(self, name, None)
            if isinstance(value, str):
                try:
                    value = json.loads(value)
                except json.JSONDecodeError as e:
                    raise ValueError(f"{name} must be a dict or a JSON object string, got {value!r} ({e}), e.g. "
                                     '\'{"key": "value"}\'.') from None
            if value is not None and not isinstance(value, dict):
                raise ValueError(
                    f"{name} must be a dict or a JSON object string, got {type(value).__name__} {value!r}."
                )
            if hasattr(self, name):
                setattr(self, name, value)
        resolve_bf16(self)
        super().__post_init__()
        # The optimizer's settings (TrainingArguments accepts NaN and infinities in them)
        _check_number(self, "learning_rate", 0)
        _check_number(self, "weight_decay", 0)
        _check_number(self, "adam_beta1", 0, 1, high_open=True)
        _check_number(self, "adam_beta2", 0, 1, high_open=True)
        _check_number(self, "adam_epsilon", 1e-30, why=" Smaller values round to 0 in float32, and Adam then divides "
                      "0 by 0 for a parameter whose gradient is still 0.")
        if not isinstance(self.max_grad_norm, (int, float)) or math.isnan(self.max_grad_norm) or self.max_grad_norm < 0:
            raise ValueError(f"max_grad_norm must be >= 0 (0: no clipping), got {self.max_grad_norm!r}.")
        _check_number(self, "warmup_steps", 0)
        # The latent and the reward
        _check_number(self, "max_completion_length", 1, integer=True)
        _check_number(self, "min_completion_length", 0, integer=True)
        if not 0 <= self.min_completion_length <= self.max_completion_length:
            raise ValueError(
                f"min_completion_length ({self.min_completion_length}) must lie in [0, max_completion_length="
                f"{self.max_completion_length}]."
            )
        _check_number(self, "num_generations", 1, integer=True)
        _check_number(self, "reward_chunk_size", 1, integer=True, optional=True)
        _check_number(self, "contrast_penalty", -1e6, 0, why=" It is added to the log-reward of a prefix after which "
                      "the wrong alternative is more likely: a penalty, <= 0 (and >= -1e6, beyond which log R / T_R "
                      "overflows float32 in the loss).")
        if self.reward_model_quantization not in (None, "8bit", "4bit"):
            raise ValueError(
                f"reward_model_quantization must be '8bit', '4bit' or unset, got {self.reward_model_quantization!r}."
            )
        if self.reward_model_quantization and not self.reward_model_name_or_path:
            raise ValueError(
                "reward_model_quantization applies to a separate reward LM: set reward_model_name_or_path too."
            )


@dataclass
class GFlowNetConfig(RolloutConfig):
    r"""
    Configuration for [`GFlowNetTrainer`]: GFlowNet fine-tuning of a causal LM (Hu et al., "Amortizing Intractable
    Inference in Large Language Models", ICLR 2024).  The defaults follow the paper's story-infilling run, except
    where noted.

    > Parameters that control the objective

    loss_type (`str`, *optional*, defaults to `"subtb"`):
        `"subtb"`: the paper's modified subtrajectory balance (eq. 3); `"tb"`: trajectory balance; `"db"`: modified
        detailed balance (the length-1 windows of `"subtb"`).
    subtb_lambda (`float`, *optional*, defaults to `1.0`):
        Weight λ^(j-i-1) of a window (i, j) in the SubTB loss; > 0, with λ^(max_completion_length - 1) <= 1e37 (so
        that no weight overflows float32).  The paper uses 1 everywhere.
    log_z (`str`, *optional*, defaults to `"batch"`):
        How log Z (the flow of the empty latent, needed by TB, and by SubTB/DB when `min_completion_length > 0`) is
        obtained: `"batch"`, a per-prompt estimate from the prompt's `num_generations` samples (VarGrad); or
        `"learned"`, a linear head on the policy's hidden state at the last prompt token.
    log_z_learning_rate (`float`, *optional*, defaults to `1e-2`):
        Learning rate of the learned log Z head; >= 0.

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
        default="subtb", metadata={"help": "Loss: 'subtb' (modified SubTB, paper eq. 3), 'tb' or 'db' (modified DB)."}
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
        if self.loss_type not in ("subtb", "tb", "db"):
            raise ValueError(f"loss_type must be 'subtb', 'tb' or 'db', got {self.loss_type!r}.")
        if self.log_z not in ("batch", "learned"):
            raise ValueError(f"log_z must be 'batch' or 'learned', got {self.log_z!r}.")
        needs_log_z = self.loss_type == "tb" or self.min_completion_length > 0
        if needs_log_z and self.log_z == "batch" and self.num_generations < 2:
            raise ValueError(
                "log_z='batch' estimates log Z from the samples of one prompt, so it needs num_generations >= 2. "
                "Raise num_generations, use log_z='learned', or (for subtb/db) set min_completion_length=0."
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

    def reward_temperature(self, step: int) -> float:
        """T_R after `step` optimizer steps: linear from start to end over the horizon, then constant."""
        if self.reward_temperature_horizon <= 0:
            return self.reward_temperature_end
        frac = min(1.0, step / self.reward_temperature_horizon)
        return self.reward_temperature_start + frac * (self.reward_temperature_end - self.reward_temperature_start)


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
