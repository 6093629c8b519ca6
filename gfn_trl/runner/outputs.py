"""What a recipe's output directory holds: a policy that standard tools reload (`save_run`), its base when nothing
else holds it (`save_base_model`), metrics.json, samples.jsonl, policy_check.json, the final metrics through the
trainer (`log_final_metrics`: trainer_state.json, test_results.json, the trackers), the model card (README.md,
`write_run_card`); and the printed summary."""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from typing import TYPE_CHECKING

import torch

from ..models import eval_mode

if TYPE_CHECKING:
    from .arguments import RecipeArguments
    from .build import Built

BASE_DIR = "base_model"


def _is_gguf(name: str | None) -> bool:
    return name is None or name.endswith(".gguf")  # None: the embedded GGUF default


def save_base_model(recipe: RecipeArguments, args, model, tokenizer, modified: bool = False) -> str:
    """Where the LoRA adapter's base lives, as `adapter_config.json`'s `base_model_name_or_path` will say; saves it
    first when nothing else holds it.

    * an unmodified hub model: its hub id (no copy of the weights);
    * an unmodified local checkpoint directory: its absolute path (no copy);
    * a GGUF file (de-quantized on loading; PEFT and `from_pretrained` cannot load it by path) or a model changed
      before the adapter was put on it (`modified`, e.g. the infilling recipe's story LM): `model` is saved in HF
      format, with its tokenizer, under `output_dir/base_model/`, and the reference is that folder's absolute path.

    Absolute, because PEFT passes the reference to `from_pretrained` unchanged: a relative path would resolve against
    the current directory of whoever loads the adapter.  After moving the output directory, load the base yourself:
    `PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(out / "base_model"), out)`.
    Call it before the adapter is put on `model` (the trainers do that); under ZeRO-3 on every process."""
    name = recipe.model_name_or_path
    if not modified and not _is_gguf(name):
        local = os.path.expanduser(name)
        return os.path.abspath(local) if os.path.exists(local) else name
    folder = os.path.abspath(os.path.join(args.output_dir, BASE_DIR))
    params = [p for p in model.parameters() if hasattr(p, "ds_id")]  # ZeRO-3 shards: gather them to save
    if params:
        import deepspeed

        gathered = deepspeed.zero.GatheredParameters(params, modifier_rank=None)
    else:
        from contextlib import nullcontext

        gathered = nullcontext()
    with gathered:
        if getattr(args, "process_index", 0) == 0:
            model.save_pretrained(folder)
            tokenizer.save_pretrained(folder)
    return folder


def _point_adapter_at(built: Built, base: str | None) -> Built:
    """Make the adapter's saved `base_model_name_or_path` the reference `save_base_model` chose."""
    if base is not None:
        for config in getattr(built.policy, "peft_config", {}).values():
            config.base_model_name_or_path = base
    return built


@torch.no_grad()
def sequence_log_prob(model, context_ids: list[int], target_ids: list[int]) -> float:
    """sum_k log p(target_k | context, target_<k) under `model`: one plain forward pass, temperature 1, no mask."""
    device = next(model.parameters()).device
    ids = torch.tensor([list(context_ids) + list(target_ids)], device=device)
    logits = model(input_ids=ids).logits[0, len(context_ids) - 1 : -1].float()
    target = torch.tensor(target_ids, device=device)
    return logits.log_softmax(-1).gather(1, target[:, None]).sum().item()


def policy_check(built: Built, scored) -> dict:
    """One evaluated sample and its log-likelihoods under the trained policy, written to `policy_check.json` so that
    a reloaded output directory can be checked against the run (run it on every process: under ZeRO-3 every rank
    must take part in the forward passes).

    `policy_log_prob`: log q(Z ⊤ | prompt) of the sample's latent then the stop token under the trained policy,
    without the sampler's constraints (a plain forward pass of `prompt_ids + latent_ids + [stop_token_id]`).
    With an adapter, `base_log_prob`: log p(Z Y | reward prompt) under the adapter-disabled base, the evaluation's
    likelihood (`log_likelihood` in samples.jsonl; here from a plain forward pass of `reward_ids`, scored from
    `reward_scored_from`)."""
    row, latent = scored.row, list(scored.tokens[0])
    stop = built.constraints.stop_token_id
    policy = built.policy
    with eval_mode(policy):
        record = {
            "text": scored.texts[0], "prompt_ids": list(row["prompt_ids"]), "latent_ids": latent,
            "stop_token_id": stop, "policy_log_prob": sequence_log_prob(policy, row["prompt_ids"], latent + [stop]),
        }
        if hasattr(policy, "disable_adapter"):
            tail = list(row["suffix_ids"]) if row.get("gfn_has_suffix") else [stop]
            with policy.disable_adapter():
                record["base_log_prob"] = sequence_log_prob(policy, row["reward_prompt_ids"], latent + tail)
            record.update(reward_ids=list(row["reward_prompt_ids"]) + latent + tail,
                          reward_scored_from=len(row["reward_prompt_ids"]),
                          evaluated_log_likelihood=scored.log_likelihood[0])
    return record


def write_outputs(output_dir: str, metrics: dict, samples: list[dict], recipe_args, train_args,
                  check: dict | None = None, task: str | None = None, failed: str | None = None) -> None:
    """metrics.json (the task's name when given, the method that `failed` after training when one did, every
    method's metrics and the arguments), samples.jsonl (latents next to the gold) and policy_check.json
    (`policy_check`)."""
    os.makedirs(output_dir, exist_ok=True)
    record = {} if task is None else {"task": task}
    if failed is not None:  # the results of a run that did not finish: compare.py --collect refuses them
        record["failed"] = failed
    record.update(metrics=metrics, recipe_args=asdict(recipe_args), train_args=train_args.to_dict())
    with open(os.path.join(output_dir, "metrics.json"), "w") as f:
        json.dump(record, f, indent=2, default=str)
    with open(os.path.join(output_dir, "samples.jsonl"), "w") as f:
        for s in samples:
            f.write(json.dumps(s, ensure_ascii=False) + "\n")
    if check is not None:
        with open(os.path.join(output_dir, "policy_check.json"), "w") as f:
            json.dump(check, f, indent=2, ensure_ascii=False)


def save_run(trainer, recipe_args, train_args, metrics: dict, samples: list[dict], built: Built | None = None,
             scored=None, task: str | None = None, failed: str | None = None) -> None:
    """Save the trained policy, its tokenizer and, on the main process, metrics.json, samples.jsonl and
    policy_check.json (the first sample of `scored`, a `Scored` row of the trained policy, with its log-likelihoods);
    `task`, the task's name, heads metrics.json (compare.py's --collect refuses another task's run); `failed`: the
    method derived after training that failed (metrics.json says so: the results of an unfinished run).

    The output directory reloads with standard tools into the policy that was evaluated:
    * LoRA (every trainer's default): the adapter (`adapter_model.safetensors`, `adapter_config.json`) and the
      tokenizer; `AutoPeftModelForCausalLM.from_pretrained(output_dir)` loads the base the adapter references (a hub
      id, a local checkpoint's absolute path, or `output_dir/base_model/`: see `save_base_model`) and the adapter.
      Under `--load_in_4bit` the policy ran on 4-bit base weights: pass the same `quantization_config` to reload it.
    * full fine-tuning (`--lora_r 0`, gfn/ppo): the model itself; `AutoModelForCausalLM.from_pretrained(output_dir)`.
    The trainer's own heads (PPO's value head, the GFlowNet's learned log Z) are not part of the policy and are not
    saved here; checkpoints (`--save_strategy`) hold them.

    `trainer.save_model` runs on every process: under DeepSpeed ZeRO-3 or FSDP each rank holds a shard to gather.
    Under `--push_to_hub` nothing is pushed here: the runner pushes the finished directory (`push_output_dir`)."""
    check = policy_check(built, scored[0]) if built is not None and scored else None
    trainer.save_model(train_args.output_dir, _internal_call=True)  # not pushed yet: the card and metrics come first
    if trainer.accelerator.is_main_process:
        tokenizer = getattr(trainer, "processing_class", None)
        if tokenizer is not None and hasattr(tokenizer, "save_pretrained"):
            tokenizer.save_pretrained(train_args.output_dir)
        write_outputs(train_args.output_dir, metrics, samples, recipe_args, train_args, check, task, failed)


def final_metric_logs(metrics: dict[str, dict[str, float]]) -> dict[str, float]:
    """{method: {metric: value}} -> {"test_<method>/<metric>": value}: the held-out evaluation of every method, under
    the HF Trainer's prefix of a test split (trackers file them under test/<method>/<metric>)."""
    return {f"test_{method}/{key}": value for method, values in metrics.items() for key, value in values.items()}


def log_final_metrics(trainer, metrics: dict[str, dict[str, float]]) -> None:
    """The run's final metrics (every method on the held-out examples) through the trainer, as an HF run reports
    its results: `trainer.log` (the log history and every `report_to` tracker, at the last step), `log_metrics`
    (printed) and `save_metrics` (`test_results.json`, merged into `all_results.json`); then `save_state` writes
    `trainer_state.json`, with the whole log history, into the output directory.  Call it on every process (the
    writes are the main process's)."""
    logs = final_metric_logs(metrics)
    trainer.log(dict(logs))
    trainer.log_metrics("test", logs)
    trainer.save_metrics("test", logs)
    trainer.save_state()


# One line per task for the model card (the recipes' docstrings say more)
def write_run_card(trainer, recipe_args, train_args, task: str, metrics: dict, built: Built | None = None,
                   example_prompt: str | None = None, base_modified: bool = False,
                   task_summary: str | None = None) -> None:
    """README.md of the output directory (main process): the model card of `gfn_trl.trainers.model_card` with the
    real base model (SmolLM2-135M-Instruct for the embedded GGUF default), what `base_model/` holds, the task, the
    run's metrics, a usage snippet for this directory and the settings.  Later cards of `trainer` (a push) keep it."""
    from ..trainers.model_card import base_model_name, set_card_info, write_model_card

    name = recipe_args.model_name_or_path
    base = base_model_name(name)
    note = None
    if base_modified:
        note = (f"The adapter's base is {base} fine-tuned on the task's training data first (as the paper's infilling "
                f"runs start from a story LM), saved in `{BASE_DIR}/`.")
    elif _is_gguf(name):
        note = (f"The base was loaded from a GGUF file of {base} (de-quantized) and is saved in `{BASE_DIR}/`, the "
                "base the adapter was trained on.")
    policy = built.policy if built is not None else None
    extra = [n for n in getattr(policy, "peft_config", {}) if n != getattr(policy, "active_adapter", None)]
    if extra:  # e.g. subjectivity's M-step judge, saved by PEFT in a subfolder of its name
        more = ", ".join(f"`{n}/`" for n in extra)
        note = ((note + " ") if note else "") + (
            f"The directory also holds the adapter{'s' if len(extra) > 1 else ''} {more} (subjectivity's M-step "
            "judge is `m_step/`): load it with `PeftModel.load_adapter(<this directory>/<name>, adapter_name=<name>)`.")
    set_card_info(trainer, base_model=base, base_note=note, task=task, task_summary=task_summary,
                  metrics=metrics, example_prompt=example_prompt,
                  stop_token_id=built.constraints.stop_token_id if built is not None else None)
    if trainer.accelerator.is_main_process:
        write_model_card(trainer, train_args.output_dir)


def print_summary(title: str, metrics: dict[str, dict[str, float]], examples: list[dict]) -> None:
    """Print a table of every method's metrics (a column per method, NaN where a method lacks a metric), then the
    examples, one labelled line per key."""
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
