"""RolloutConfig: the settings every gfn_trl trainer shares; a TRL config (so a `transformers.TrainingArguments`)."""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from typing import Any

import torch

from .._trl import _BaseConfig


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
    cache_implementation (`str`, *optional*):
        The sampler's KV cache, as in TRL's GRPO: `"static"`, one preallocated `transformers.StaticCache` and fixed
        shapes at every decode step (needed for `sampler_compile`); unset or `"dynamic"`, a cache that grows by one
        position per step.  Both draw the same latents for the same seeds (`gfn_trl.sampling.sample_latents`).
    sampler_compile (`bool`, *optional*, defaults to `False`):
        Compile the sampler's decode step with `torch.compile` (CUDA graphs on a GPU); implies
        `cache_implementation="static"`.  The first batch of each shape pays the compilation (seconds to a minute).

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
    lm_reward_weight (`float`, *optional*, defaults to `1.0`):
        α, the weight of the frozen LM's log-likelihood in the log-reward: log R(Z) = α · log p_LM(Z [Y] |
        reward_prompt) + Σ_i w_i · r_i(Z), the whole divided by the reward temperature (a posterior tilted by the
        reward functions, `reward_funcs` on the trainer).  1 with no functions is the paper's reward; 0 drops the LM
        prior (no reward LM is then used, nor loaded); finite, >= 0.
    reward_weights (`list[float]`, *optional*):
        w_i, the weights of the trainer's `reward_funcs`, one each (TRL's `GRPOConfig.reward_weights`); finite.  By
        default 1 each.

    > Parameters that control logging

    log_completions (`bool`, *optional*, defaults to `False`):
        At every log, print a table of latents sampled since the last one (the last optimizer step's, and every one
        of an evaluation): prompt, latent (decoded), untempered log R(Z ⊤), behaviour (on_policy, tempered or replay)
        and sampling temperature; printed on the main process (with `rich` if installed) and sent to the trackers of
        `report_to` that take tables (tensorboard, wandb, trackio).  TRL's name (`GRPOConfig.log_completions`).
    num_completions_to_print (`int`, *optional*):
        Rows of that table to print (a random choice, the same on every rerun); None prints them all.  The trackers
        get the whole table.  >= 1 when set.

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
    cache_implementation: str | None = field(
        default=None,
        metadata={"help": "The sampler's KV cache: 'static' (preallocated, fixed shapes; needed by sampler_compile) or "
                  "unset/'dynamic' (grows by one position per step). The same latents either way."},
    )
    sampler_compile: bool = field(
        default=False,
        metadata={"help": "Compile the sampler's decode step with torch.compile (CUDA graphs on a GPU); implies "
                  "cache_implementation='static'."},
    )

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

    lm_reward_weight: float = field(
        default=1.0,
        metadata={"help": "alpha, the weight of the frozen LM's log-likelihood in log R = alpha * log p_LM(Z [Y] | "
                  "reward_prompt) + sum_i w_i * r_i(Z) (over the reward temperature); r_i are the trainer's "
                  "reward_funcs. 1 with no functions: the paper's reward; 0 drops the LM prior (no reward LM is used); "
                  "finite, >= 0."},
    )
    reward_weights: list[float] | None = field(
        default=None,
        metadata={"help": "Weights w_i of the trainer's reward_funcs, one each (TRL's name); finite. Default: 1 each."},
    )

    # Logging
    log_completions: bool = field(
        default=False,
        metadata={"help": "At every log, print a table of the latents sampled since the last one (prompt, latent, "
                  "untempered log R, behaviour, sampling temperature) and send it to the report_to trackers that take "
                  "tables (tensorboard, wandb, trackio)."},
    )
    num_completions_to_print: int | None = field(
        default=None,
        metadata={"help": "Rows of the log_completions table to print (a fixed random choice); None prints them all. "
                  "The trackers get the whole table."},
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
        if self.cache_implementation not in (None, "dynamic", "static"):
            raise ValueError(f"cache_implementation must be 'static', 'dynamic' or unset, got "
                             f"{self.cache_implementation!r}.")
        if self.sampler_compile and self.cache_implementation == "dynamic":
            raise ValueError("sampler_compile=True compiles the static-cache decode step: set cache_implementation="
                             "'static' (or leave it unset), not 'dynamic'.")
        _check_number(self, "reward_chunk_size", 1, integer=True, optional=True)
        _check_number(self, "num_completions_to_print", 1, integer=True, optional=True)
        _check_number(self, "contrast_penalty", -1e6, 0, why=" It is added to the log-reward of a prefix after which "
                      "the wrong alternative is more likely: a penalty, <= 0 (and >= -1e6, beyond which log R / T_R "
                      "overflows float32 in the loss).")
        _check_number(self, "lm_reward_weight", 0, why=" It is the weight of the LM prior in the log-reward (0 drops "
                      "it).")
        if self.reward_weights is not None:
            if isinstance(self.reward_weights, (int, float)):
                self.reward_weights = [self.reward_weights]
            bad = [w for w in self.reward_weights
                   if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w)]
            if bad:
                raise ValueError(f"reward_weights must be finite numbers, one per reward function, got "
                                 f"{self.reward_weights!r}.")
        if self.lm_reward_weight == 0 and self.reward_model_name_or_path:
            raise ValueError("reward_model_name_or_path is the LM of the prior term, but lm_reward_weight=0 drops that "
                             "term: unset one of them.")
        if self.reward_model_quantization not in (None, "8bit", "4bit"):
            raise ValueError(
                f"reward_model_quantization must be '8bit', '4bit' or unset, got {self.reward_model_quantization!r}."
            )
        if self.reward_model_quantization and not self.reward_model_name_or_path:
            raise ValueError(
                "reward_model_quantization applies to a separate reward LM: set reward_model_name_or_path too."
            )
