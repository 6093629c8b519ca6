"""Loading the model and building the chosen trainer, with what evaluation needs from it.

`build_trainer` builds the trainer and returns, for evaluation, the policy, the constraints and the *same* base-LM
scorer for every method, so that every method is sampled from the same constrained latent space and scored by the
same likelihood and metric code.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ..models import load_causal_lm, load_tokenizer, quantized_load_kwargs, smollm2_gguf_path
from ..rewards import LikelihoodReward
from ..sampling import LatentConstraints
from ..tasks.base import TaskSpec
from ..trainers import setup
from .arguments import RecipeArguments
from .checks import check_trainer_choice
from .outputs import _point_adapter_at, save_base_model


@dataclass
class Built:
    """A recipe's trainer and what every method is evaluated with."""

    trainer: Any
    policy: Any  # the unwrapped policy (a PeftModel: `disable_adapter()` gives the untuned LM)
    reward: LikelihoodReward  # the base-LM likelihood every method is scored with
    constraints: LatentConstraints  # the latent space every method is sampled from


def build_trainer(recipe: RecipeArguments, args, model, tokenizer, train_dataset, vocab_mask=None,
                  gold_column: str | None = "gold", allow_decoding: bool = False, tool=None,
                  base_modified: bool = False) -> Built:
    """The trainer `recipe.trainer` on the task's data contract (`train_dataset`), LoRA from the recipe's settings.

    `gold_column` names the gold latents that `--trainer sft` trains on (None: the task has none);
    `allow_decoding`: the task evaluates `--decoding` baselines; `tool`: a `gfn_trl.tools` tool whose outputs are
    forced tokens of every method's latents; `base_modified`: `model` is no longer the checkpoint it was loaded from
    (e.g. the infilling recipe's story LM), so it is saved under `output_dir/base_model/` for the adapter to
    reference (`save_base_model`).

    Raises:
        ValueError: as `check_trainer_choice`; `--trainer sft` on data without `gold_column`; the latent space's
            checks (`gfn_trl.trainers.setup.latent_space`) and the trainers' own construction-time checks.
    """
    from ..trainers.gflownet_trainer import GFlowNetTrainer
    from ..trainers.ppo_trainer import PPOTrainer
    from ..trainers.trl_baselines import build_grpo_trainer, build_rloo_trainer, build_sft_trainer

    name = recipe.trainer
    spec = TaskSpec("this", (), gold=gold_column is not None, decoding=allow_decoding)
    check_trainer_choice(recipe, spec, tool is not None)
    lora = peft_config(recipe)
    base = save_base_model(recipe, args, model, tokenizer, base_modified) if lora is not None else None
    if name in ("gfn", "ppo"):
        cls = GFlowNetTrainer if name == "gfn" else PPOTrainer
        trainer = cls(model, args, train_dataset=train_dataset, processing_class=tokenizer, peft_config=lora,
                      vocab_mask=vocab_mask, tool=tool)
        built = Built(trainer, trainer.accelerator.unwrap_model(trainer.model), trainer.reward, trainer.constraints)
        return _point_adapter_at(built, base)
    # TRL's trainers: the latent space and pad token of the shared set-up, as our trainers build them
    constraints = setup.latent_space(tokenizer, args.max_completion_length, args.min_completion_length,
                                     args.stop_token, vocab_mask, tool, model)
    setup.ensure_pad_token(tokenizer)
    if name in ("grpo", "rloo"):
        build = build_grpo_trainer if name == "grpo" else build_rloo_trainer
        trainer = build(model, args, train_dataset, constraints, tokenizer, lora,
                        reward_chunk_size=args.reward_chunk_size)
        policy = trainer.accelerator.unwrap_model(trainer.model)
        return _point_adapter_at(Built(trainer, policy, trainer.latent_reward.reward, constraints), base)
    if gold_column not in train_dataset.column_names:
        raise ValueError(f"--trainer sft trains on gold latents: the training data has no '{gold_column}' column "
                         f"(has {train_dataset.column_names}).")
    trainer = build_sft_trainer(model, args, train_dataset, constraints.stop_token_id, tokenizer, lora, gold_column)
    policy = trainer.accelerator.unwrap_model(trainer.model)
    reward = LikelihoodReward(policy, None, constraints.stop_token_id, tokenizer.pad_token_id, args.reward_chunk_size,
                              trainer.accelerator.autocast)
    return _point_adapter_at(Built(trainer, policy, reward, constraints), base)


def load_model_and_tokenizer(args: RecipeArguments, train_args=None):
    """The recipe's model (in `--dtype`) and tokenizer, by default the embedded SmolLM2-135M-Instruct GGUF; with
    `--load_in_4bit` (QLoRA) the model's weights are loaded in 4 bits.

    Raises:
        ValueError: `--load_in_4bit` with a GGUF model.
    """
    name = args.model_name_or_path or smollm2_gguf_path()
    quantize = getattr(train_args, "load_in_4bit", False)
    if quantize and name.endswith(".gguf"):
        raise ValueError("--load_in_4bit quantizes safetensors/PyTorch weights; a GGUF model (the embedded default) "
                         "cannot be loaded that way. Pass --model_name_or_path with a hub id or a local checkpoint.")
    tokenizer = load_tokenizer(name)
    kwargs = quantized_load_kwargs("4bit", train_args.device) if quantize else {}
    model = load_causal_lm(name, dtype=getattr(torch, args.dtype), **kwargs)
    return model, tokenizer


def peft_config(args: RecipeArguments):
    """The LoRA settings of the recipe (`--lora_r`, `--lora_alpha`, `--lora_dropout`, `--lora_target_modules`), or
    None for full fine-tuning (`--lora_r 0`)."""
    if args.lora_r <= 0:
        return None
    from peft import LoraConfig

    return LoraConfig(
        r=args.lora_r, lora_alpha=args.lora_alpha, lora_dropout=args.lora_dropout,
        target_modules=args.lora_target_modules,
    )
