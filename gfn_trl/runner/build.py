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
                  base_modified: bool = False, reward_funcs=None) -> Built:
    """The trainer `recipe.trainer` on the task's data contract (`train_dataset`), LoRA from the recipe's settings.

    `gold_column` names the gold latents that `--trainer sft` trains on (None: the task has none);
    `allow_decoding`: the task evaluates `--decoding` baselines; `tool`: a `gfn_trl.tools` tool whose outputs are
    forced tokens of every method's latents; `base_modified`: `model` is no longer the checkpoint it was loaded from
    (e.g. the infilling recipe's story LM), so it is saved under `output_dir/base_model/` for the adapter to
    reference (`save_base_model`); `reward_funcs`: TRL-signature reward functions added to the LM prior (weighted
    by `args.lm_reward_weight`) for every trainer but sft (`gfn_trl.rewards.functions`).

    Raises:
        ValueError: as `check_trainer_choice`; `--trainer sft` on data without `gold_column`; the latent space's
            checks (`gfn_trl.trainers.setup.latent_space`) and the trainers' own construction-time checks.
    """
    from ..trainers.gflownet_trainer import GFlowNetTrainer
    from ..trainers.ppo_trainer import PPOTrainer
    from ..trainers.trl_baselines import build_grpo_trainer, build_rloo_trainer, build_sft_trainer

    name = recipe.trainer
    if args.dataloader_pin_memory and not torch.cuda.is_available():
        args.dataloader_pin_memory = False  # nothing to pin to: torch would warn at every epoch, and rows are lists
    spec = TaskSpec("this", (), gold=gold_column is not None, decoding=allow_decoding)
    check_trainer_choice(recipe, spec, tool is not None)
    lora = peft_config(recipe)
    base = save_base_model(recipe, args, model, tokenizer, base_modified) if lora is not None else None
    if name in ("gfn", "ppo"):
        cls = GFlowNetTrainer if name == "gfn" else PPOTrainer
        trainer = cls(model, args, train_dataset=train_dataset, processing_class=tokenizer, peft_config=lora,
                      vocab_mask=vocab_mask, tool=tool, reward_funcs=reward_funcs)
        built = Built(trainer, trainer.accelerator.unwrap_model(trainer.model), trainer.reward, trainer.constraints)
        return _point_adapter_at(built, base)
    # TRL's trainers: the latent space and pad token of the shared set-up, as our trainers build them
    constraints = setup.latent_space(tokenizer, args.max_completion_length, args.min_completion_length,
                                     args.stop_token, vocab_mask, tool, model)
    setup.ensure_pad_token(tokenizer)
    if name in ("grpo", "rloo"):
        build = build_grpo_trainer if name == "grpo" else build_rloo_trainer
        trainer = build(model, args, train_dataset, constraints, tokenizer, lora,
                        reward_chunk_size=args.reward_chunk_size, reward_funcs=reward_funcs,
                        lm_reward_weight=args.lm_reward_weight, contrast_penalty=args.contrast_penalty)
        policy = trainer.accelerator.unwrap_model(trainer.model)
        return _point_adapter_at(Built(trainer, policy, trainer.latent_reward.reward, constraints), base)
    if gold_column not in train_dataset.column_names:
        raise ValueError(f"--trainer sft trains on gold latents: the training data has no '{gold_column}' column "
                         f"(has {train_dataset.column_names}).")
    trainer = build_sft_trainer(model, args, train_dataset, constraints.stop_token_id, tokenizer, lora, gold_column)
    policy = trainer.accelerator.unwrap_model(trainer.model)
    reward = LikelihoodReward(policy, None, constraints.stop_token_id, tokenizer.pad_token_id, args.reward_chunk_size,
                              trainer.accelerator.autocast, args.contrast_penalty)
    return _point_adapter_at(Built(trainer, policy, reward, constraints), base)


def load_model_and_tokenizer(args: RecipeArguments, train_args=None):
    """The recipe's model and tokenizer, as `ModelConfig` says (by default the embedded SmolLM2-135M-Instruct GGUF):
    `--dtype` ("auto": the checkpoint's), `--model_revision`, `--attn_implementation`, `--trust_remote_code`, the
    trainer config's `model_init_kwargs` (if any), and with `--load_in_4bit` (QLoRA: NF4, `--bnb_4bit_quant_type`,
    `--use_bnb_nested_quant`, `--bnb_4bit_quant_storage`) or `--load_in_8bit` the base weights in 4 or 8 bits
    (bitsandbytes), whole on the process's device.  `train_args.load_in_4bit` (a `GFlowNetConfig` / `PPOConfig`
    field) also asks for 4 bits.

    Raises:
        ValueError: `--load_in_4bit` / `--load_in_8bit` with a GGUF model.
        ImportError: 8 or 4 bits without bitsandbytes.
    """
    name = args.model_name_or_path or smollm2_gguf_path()
    bits = ("4bit" if args.load_in_4bit or getattr(train_args, "load_in_4bit", False)
            else "8bit" if args.load_in_8bit else None)
    if bits and name.endswith(".gguf"):
        raise ValueError(f"--load_in_{bits[0]}bit quantizes safetensors/PyTorch weights; a GGUF model (the embedded "
                         "default) cannot be loaded that way. Pass --model_name_or_path with a hub id or a local "
                         "checkpoint.")
    kwargs = dict(getattr(train_args, "model_init_kwargs", None) or {})
    revision = None if name.endswith(".gguf") or args.model_revision == "main" else args.model_revision
    hub_kwargs = {"revision": revision} if revision else {}
    if args.trust_remote_code:
        hub_kwargs["trust_remote_code"] = True
    kwargs.update(hub_kwargs)
    if args.attn_implementation is not None:
        kwargs["attn_implementation"] = args.attn_implementation
    if bits:
        device = getattr(train_args, "device", "cpu")
        kwargs.update(quantized_load_kwargs(bits, device))
        if bits == "4bit":
            q = kwargs["quantization_config"]
            q.bnb_4bit_quant_type = args.bnb_4bit_quant_type
            q.bnb_4bit_use_double_quant = args.use_bnb_nested_quant
            if args.bnb_4bit_quant_storage is not None:
                q.bnb_4bit_quant_storage = args.bnb_4bit_quant_storage
    if hub_kwargs:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(name, **hub_kwargs)
    else:
        tokenizer = load_tokenizer(name)
    dtype = kwargs.pop("dtype", None) or (args.dtype if args.dtype in (None, "auto") else getattr(torch, args.dtype))
    model = load_causal_lm(name, dtype=dtype, **kwargs)
    return model, tokenizer


def peft_config(args: RecipeArguments):
    """The recipe's LoRA settings from `ModelConfig` (`--lora_r`, `--lora_alpha`, `--lora_dropout`,
    `--lora_target_modules`, `--lora_target_parameters`, `--lora_modules_to_save`, `--use_rslora`, `--use_dora`;
    TRL's `get_peft_config`), or None for full fine-tuning (`--use_peft false` or `--lora_r 0`).  Unset targets are
    detected from the architecture when the trainer applies the adapter (`gfn_trl.models.resolve_peft_config`)."""
    if not args.use_peft or args.lora_r <= 0:
        return None
    from trl import get_peft_config

    return get_peft_config(args)
