"""The recipes' runner: the arguments every recipe shares, the checks before anything expensive, building the chosen
trainer, the output directory, and `run(task, recipe, args, task_args)`, the one skeleton of every recipe.

    arguments.py  RecipeArguments (TRL's ModelConfig + the task-side flags), the TRL-baseline configs with the latent's
                  fields, `make_recipe_parser` (the grouped `--help`)
    checks.py     `validate` and the checks it makes (model and data paths, files, packages, trainer choice)
    build.py      `load_model_and_tokenizer`, `build_trainer` -> `Built` (trainer, policy, reward, constraints)
    outputs.py    `save_run`, `save_base_model`, `policy_check`, `print_summary`, `log_final_metrics`,
                  `write_run_card` (README.md)
    pipeline.py   `check` and `run`: the skeleton, with a `gfn_trl.tasks.base.Task` for everything task-specific

The names are imported on first use: a recipe's `--help` needs `arguments` only, not the tasks, rewards and models.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

# public name -> the module that defines it (relative to this package, or to gfn_trl for "..")
_EXPORTS = {
    "TRAINERS": ".arguments", "LatentGRPOConfig": ".arguments", "LatentRLOOConfig": ".arguments",
    "LatentSFTConfig": ".arguments", "RecipeArguments": ".arguments", "config_class": ".arguments",
    "make_recipe_parser": ".arguments", "trainer_from_argv": ".arguments",
    "Built": ".build", "build_trainer": ".build", "load_model_and_tokenizer": ".build", "peft_config": ".build",
    "DTYPES": ".checks", "check_data_source": ".checks", "check_model_source": ".checks",
    "check_output_dir": ".checks", "check_train_rows": ".checks", "check_trainer_choice": ".checks",
    "looks_like_path": ".checks", "validate": ".checks",
    "BASE_DIR": ".outputs", "final_metric_logs": ".outputs",
    "write_run_card": ".outputs", "log_final_metrics": ".outputs", "policy_check": ".outputs",
    "print_summary": ".outputs",
    "save_base_model": ".outputs", "save_run": ".outputs", "sequence_log_prob": ".outputs", "write_outputs": ".outputs",
    "check": ".pipeline", "get_task": ".pipeline", "run": ".pipeline",
    "TaskSpec": "..tasks.base", "single_line_mask": "..tasks.base",
    "is_local_file": "..tasks.files", "load_data": "..tasks.files", "read_table": "..tasks.files",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name], __name__), name)
        globals()[name] = value  # later lookups skip this function
        return value
    raise AttributeError(f"module 'gfn_trl.runner' has no attribute {name!r}")


def __dir__():
    return sorted([*globals(), *_EXPORTS])


if TYPE_CHECKING:  # for type checkers and IDEs
    from ..tasks.base import TaskSpec, single_line_mask  # noqa: F401
    from ..tasks.files import is_local_file, load_data, read_table  # noqa: F401
    from .arguments import (  # noqa: F401
        TRAINERS,
        LatentGRPOConfig,
        LatentRLOOConfig,
        LatentSFTConfig,
        RecipeArguments,
        config_class,
        make_recipe_parser,
        trainer_from_argv,
    )
    from .build import Built, build_trainer, load_model_and_tokenizer, peft_config  # noqa: F401
    from .checks import (  # noqa: F401
        DTYPES,
        check_data_source,
        check_model_source,
        check_output_dir,
        check_train_rows,
        check_trainer_choice,
        looks_like_path,
        validate,
    )
    from .outputs import (  # noqa: F401
        BASE_DIR,
        final_metric_logs,
        log_final_metrics,
        policy_check,
        print_summary,
        save_base_model,
        save_run,
        sequence_log_prob,
        write_outputs,
        write_run_card,
    )
    from .pipeline import check, get_task, run  # noqa: F401
