"""GFlowNetConfig: the trainer's settings, a TRL config (and so a `transformers.TrainingArguments`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from trl.trainer.base_config import _BaseConfig


@dataclass
class GFlowNetConfig(_BaseConfig):
    r"""
    Configuration for [`GFlowNetTrainer`]: GFlowNet fine-tuning of a causal LM (Hu et al., "Amortizing Intractable
    Inference in Large Language Models", ICLR 2024).  The defaults follow the paper's story-infilling run, except
    where noted.

    > Parameters that control the objective

    loss_type (`str`, *optional*, defaults to `"subtb"`):
        `"subtb"`: the paper's modified subtrajectory balance (eq. 3); `"tb"`: trajectory balance; `"db"`: modified
        detailed balance (the length-1 windows of `"subtb"`).
    subtb_lambda (`float`, *optional*, defaults to `1.0`):
        Weight λ^(j-i-1) of a window (i, j) in the SubTB loss.  The paper uses 1 everywhere.
    log_z (`str`, *optional*, defaults to `"batch"`):
        How log Z (the flow of the empty latent, needed by TB, and by SubTB/DB when `min_completion_length > 0`) is
        obtained: `"batch"`, a per-prompt estimate from the prompt's `num_generations` samples (VarGrad); or
        `"learned"`, a linear head on the policy's hidden state at the last prompt token.
    log_z_learning_rate (`float`, *optional*, defaults to `1e-2`):
        Learning rate of the learned log Z head.

    > Parameters that control the latent and its sampling

    max_completion_length (`int`, *optional*, defaults to `25`):
        Maximum number of latent tokens; the stop action is forced at this length (in sampling and in the loss).
    min_completion_length (`int`, *optional*, defaults to `1`):
        Minimum number of latent tokens; the stop action is banned below it (in sampling and in the loss).
    stop_token (`str`, *optional*):
        The token that ends the latent, ⊤.  Defaults to the tokenizer's EOS token.  Must encode to one token.
    num_generations (`int`, *optional*, defaults to `8`):
        Latents sampled per prompt in each micro-batch (`per_device_train_batch_size` counts prompts).
    on_policy_prob (`float`, *optional*, defaults to `0.25`):
        Probability that a micro-batch is sampled from the policy at temperature 1.
    tempered_prob (`float`, *optional*, defaults to `0.5`):
        Probability that a micro-batch is sampled at a temperature drawn from U[`sampling_temperature_min`,
        `sampling_temperature_max`].
    replay_prob (`float`, *optional*, defaults to `0.25`):
        Probability that a micro-batch is drawn from the replay buffer (tempered sampling when a prompt has none).
    sampling_temperature_min (`float`, *optional*, defaults to `0.5`):
        Lower end of the exploration temperature range.
    sampling_temperature_max (`float`, *optional*, defaults to `2.0`):
        Upper end of the exploration temperature range.

    > Parameters that control the reward

    reward_temperature_start (`float`, *optional*, defaults to `1.1`):
        Reward temperature T_R at step 0 (log R is divided by T_R).
    reward_temperature_end (`float`, *optional*, defaults to `0.85`):
        Reward temperature after `reward_temperature_horizon` optimizer steps (linear in between).
    reward_temperature_horizon (`int`, *optional*, defaults to `100`):
        Optimizer steps over which T_R moves from start to end.
    reward_model_name_or_path (`str`, *optional*):
        A separate frozen reward LM (hub id or path; must share the policy's tokenizer).  By default the reward is
        the policy's base model with the LoRA adapter disabled (no second copy of the weights).
    reward_model_quantization (`str`, *optional*):
        `"8bit"` or `"4bit"`: load the separate reward LM (`reward_model_name_or_path`) quantized with bitsandbytes,
        on this process's device and outside the DeepSpeed/FSDP engine.  Needs a GPU and `pip install bitsandbytes`.
    reward_chunk_size (`int`, *optional*):
        Rows scored at once by the reward LM (bounds the memory of its logits).  Defaults to the whole batch.
    contrast_penalty (`float`, *optional*, defaults to `-50.0`):
        Added to the untempered log R of every prefix after which a row's `contrast_suffix` column (e.g. the wrong
        label) is more likely than its `suffix`.  The paper's subjectivity reward; no effect without the column.

    > Parameters that control the replay buffer

    replay_buffer_size (`int`, *optional*, defaults to `50`):
        Latents kept per prompt (the highest-reward distinct ones).
    replay_prioritized (`bool`, *optional*, defaults to `True`):
        Sample replayed latents with probability ∝ R (untempered) rather than uniformly.
    replay_sim_tolerance (`float`, *optional*, defaults to `0.0`):
        Latents within token edit distance `tol * (len_a + len_b)` count as duplicates (0: exact duplicates only;
        the paper used 0.25).

    > Other parameters

    disable_dropout (`bool`, *optional*, defaults to `True`):
        Turn dropout off in the policy, so that the teacher-forced log-probabilities are those of the sampler.
    model_init_kwargs (`dict`, *optional*):
        Keyword arguments for `from_pretrained` when `model` is a string (e.g. `{"dtype": "bfloat16"}` or
        `{"gguf_file": "model.gguf"}`).
    """

    _VALID_DICT_FIELDS = _BaseConfig._VALID_DICT_FIELDS + ["model_init_kwargs"]

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
        metadata={"help": "Use bf16 mixed precision. Defaults to True only on a CUDA device that supports it."},
    )

    # Objective
    loss_type: str = field(
        default="subtb", metadata={"help": "Loss: 'subtb' (modified SubTB, paper eq. 3), 'tb' or 'db' (modified DB)."}
    )
    subtb_lambda: float = field(default=1.0, metadata={"help": "Window weight lambda^(j-i-1) in SubTB; 1 in the paper."})
    log_z: str = field(
        default="batch",
        metadata={"help": "log Z source when needed: 'batch' (per-prompt VarGrad estimate) or 'learned' (a head)."},
    )
    log_z_learning_rate: float = field(default=1e-2, metadata={"help": "Learning rate of the learned log Z head."})

    # Latent and sampling
    max_completion_length: int = field(default=25, metadata={"help": "Maximum latent tokens; the stop is forced there."})
    min_completion_length: int = field(default=1, metadata={"help": "Minimum latent tokens; no stop below it."})
    stop_token: str | None = field(
        default=None, metadata={"help": "Token that ends the latent (default: the tokenizer's EOS). One token."}
    )
    num_generations: int = field(default=8, metadata={"help": "Latents sampled per prompt in each micro-batch."})
    on_policy_prob: float = field(default=0.25, metadata={"help": "Probability of sampling a batch at temperature 1."})
    tempered_prob: float = field(
        default=0.5, metadata={"help": "Probability of sampling a batch at a temperature from U[min, max]."}
    )
    replay_prob: float = field(default=0.25, metadata={"help": "Probability of drawing a batch from the replay buffer."})
    sampling_temperature_min: float = field(default=0.5, metadata={"help": "Lowest exploration temperature."})
    sampling_temperature_max: float = field(default=2.0, metadata={"help": "Highest exploration temperature."})

    # Reward
    reward_temperature_start: float = field(default=1.1, metadata={"help": "Reward temperature T_R at step 0."})
    reward_temperature_end: float = field(default=0.85, metadata={"help": "Reward temperature after the horizon."})
    reward_temperature_horizon: int = field(
        default=100, metadata={"help": "Optimizer steps over which T_R moves linearly from start to end."}
    )
    reward_model_name_or_path: str | None = field(
        default=None,
        metadata={"help": "Separate frozen reward LM. Default: the policy's base with the LoRA adapter disabled."},
    )
    reward_chunk_size: int | None = field(default=None, metadata={"help": "Rows scored at once by the reward LM."})
    reward_model_quantization: str | None = field(
        default=None,
        metadata={"help": "Load the separate reward LM in '8bit' or '4bit' (bitsandbytes, GPU), outside any "
                  "DeepSpeed/FSDP engine."},
    )
    contrast_penalty: float = field(
        default=-50.0,
        metadata={"help": "Added to the untempered log R of a prefix after which the row's contrast_suffix (e.g. the "
                  "wrong label) is more likely than its suffix. -50 in the paper's subjectivity task."},
    )

    # Replay
    replay_buffer_size: int = field(default=50, metadata={"help": "Latents kept per prompt in the replay buffer."})
    replay_prioritized: bool = field(default=True, metadata={"help": "Sample replayed latents with probability ∝ R."})
    replay_sim_tolerance: float = field(
        default=0.0, metadata={"help": "Edit-distance tolerance for duplicates (0: exact duplicates only)."}
    )

    # Other
    disable_dropout: bool = field(default=True, metadata={"help": "Turn the policy's dropout off."})
    model_init_kwargs: dict[str, Any] | str | None = field(
        default=None, metadata={"help": "Keyword arguments for from_pretrained when the model is given by name."}
    )

    def __post_init__(self):
        if self.bf16 is None:
            self.bf16 = bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported()) and not self.fp16
        super().__post_init__()
        if self.loss_type not in ("subtb", "tb", "db"):
            raise ValueError(f"loss_type must be 'subtb', 'tb' or 'db', got {self.loss_type!r}.")
        if self.log_z not in ("batch", "learned"):
            raise ValueError(f"log_z must be 'batch' or 'learned', got {self.log_z!r}.")
        if self.max_completion_length < 1:
            raise ValueError(f"max_completion_length must be >= 1, got {self.max_completion_length}.")
        if not 0 <= self.min_completion_length <= self.max_completion_length:
            raise ValueError(
                f"min_completion_length ({self.min_completion_length}) must lie in [0, max_completion_length="
                f"{self.max_completion_length}]."
            )
        if self.num_generations < 1:
            raise ValueError(f"num_generations must be >= 1, got {self.num_generations}.")
        needs_log_z = self.loss_type == "tb" or self.min_completion_length > 0
        if needs_log_z and self.log_z == "batch" and self.num_generations < 2:
            raise ValueError(
                "log_z='batch' estimates log Z from the samples of one prompt, so it needs num_generations >= 2. "
                "Raise num_generations, use log_z='learned', or (for subtb/db) set min_completion_length=0."
            )
        probs = (self.on_policy_prob, self.tempered_prob, self.replay_prob)
        if min(probs) < 0 or sum(probs) <= 0:
            raise ValueError(
                f"on_policy_prob, tempered_prob and replay_prob must be >= 0 and not all 0, got {probs}."
            )
        if not 0 < self.sampling_temperature_min <= self.sampling_temperature_max:
            raise ValueError(
                "Need 0 < sampling_temperature_min <= sampling_temperature_max, got "
                f"{self.sampling_temperature_min} and {self.sampling_temperature_max}."
            )
        if min(self.reward_temperature_start, self.reward_temperature_end) <= 0:
            raise ValueError("Reward temperatures must be > 0.")
        if self.reward_model_quantization not in (None, "8bit", "4bit"):
            raise ValueError(f"reward_model_quantization must be '8bit', '4bit' or unset, got {self.reward_model_quantization!r}.")
        if self.reward_model_quantization and not self.reward_model_name_or_path:
            raise ValueError("reward_model_quantization applies to a separate reward LM: set reward_model_name_or_path too.")
        if isinstance(self.model_init_kwargs, str):
            import json

            self.model_init_kwargs = json.loads(self.model_init_kwargs)

    def reward_temperature(self, step: int) -> float:
        """T_R after `step` optimizer steps: linear from start to end over the horizon, then constant."""
        if self.reward_temperature_horizon <= 0:
            return self.reward_temperature_end
        frac = min(1.0, step / self.reward_temperature_horizon)
        return self.reward_temperature_start + frac * (self.reward_temperature_end - self.reward_temperature_start)
