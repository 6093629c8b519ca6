"""The recipes' runner: the arguments every recipe shares, the checks before anything expensive, building the chosen
trainer, the output directory, and `run(task, recipe, args, task_args)`, the one skeleton of every recipe.

    arguments.py  RecipeArguments, the TRL-baseline configs with the latent's fields, `make_recipe_parser`
    checks.py     `validate` and the checks it makes (model and data paths, files, packages, trainer choice)
    build.py      `load_model_and_tokenizer`, `build_trainer` -> `Built` (trainer, policy, reward, constraints)
    outputs.py    `save_run`, `save_base_model`, `policy_check`, `print_summary`
    pipeline.py   `check` and `run`: the skeleton, with a `gfn_trl.tasks.base.Task` for everything task-specific
"""

from ..tasks.base import TaskSpec, single_line_mask
from ..tasks.files import is_local_file, load_data, read_table
from .arguments import (
    TRAINERS,
    LatentGRPOConfig,
    LatentRLOOConfig,
    LatentSFTConfig,
    RecipeArguments,
    config_class,
    make_recipe_parser,
    trainer_from_argv,
)
from .build import Built, build_trainer, load_model_and_tokenizer, peft_config
from .checks import (
    DTYPES,
    check_data_source,
    check_model_source,
    check_output_dir,
    check_train_rows,
    check_trainer_choice,
    looks_like_path,
    validate,
)
from .outputs import BASE_DIR, policy_check, print_summary, save_base_model, save_run, sequence_log_prob, write_outputs
from .pipeline import check, run

__all__ = [
    "BASE_DIR", "DTYPES", "TRAINERS", "Built", "LatentGRPOConfig", "LatentRLOOConfig", "LatentSFTConfig",
    "RecipeArguments", "TaskSpec", "build_trainer", "check", "check_data_source", "check_model_source",
    "check_output_dir", "check_train_rows", "check_trainer_choice", "config_class", "is_local_file", "load_data",
    "load_model_and_tokenizer", "looks_like_path", "make_recipe_parser", "peft_config", "policy_check",
    "print_summary", "read_table", "run", "save_base_model", "save_run", "sequence_log_prob", "single_line_mask",
    "trainer_from_argv", "validate", "write_outputs",
]
