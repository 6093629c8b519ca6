"""Every use of TRL's private API in gfn_trl, in one place, so that a new TRL release is one file to adapt.

* `_BaseConfig` / `_BaseTrainer` (`trl.trainer.base_config`, `trl.trainer.base_trainer`): the bases of TRL's own
  config/trainer pairs (model cards from `_name`, `_tag_names`, `_paper`; `_VALID_DICT_FIELDS`), which
  `RolloutConfig` and `RolloutTrainer` extend as TRL's GRPO and RLOO do.
* `add_hooks` / `remove_hooks` (`trl.models.utils`): put back / take off a DeepSpeed engine's ZeRO-3 parameter
  hooks (what `trl.models.utils.unwrap_model_for_generation` does); `gfn_trl.trainers.zero3` uses them.  Imported on
  first call: they import DeepSpeed, which only ZeRO-3 runs need.

Written against TRL 1.16.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from trl.trainer.base_config import _BaseConfig

if TYPE_CHECKING:
    from trl.trainer.base_trainer import _BaseTrainer


def __getattr__(name: str):
    # `_BaseTrainer` on first use: it imports the HF Trainer and model code, which a recipe's `--help` (built from
    # the config classes, which need `_BaseConfig` only) does not need.
    if name == "_BaseTrainer":
        from trl.trainer.base_trainer import _BaseTrainer

        globals()[name] = _BaseTrainer
        return _BaseTrainer
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def add_hooks(engine) -> None:
    """Restore the ZeRO-3 gather/release hooks of a DeepSpeed `engine` (TRL's `trl.models.utils.add_hooks`)."""
    from trl.models.utils import add_hooks as _add_hooks

    _add_hooks(engine)


def remove_hooks(engine) -> None:
    """Remove the ZeRO-3 gather/release hooks of a DeepSpeed `engine` (TRL's `trl.models.utils.remove_hooks`)."""
    from trl.models.utils import remove_hooks as _remove_hooks

    _remove_hooks(engine)


__all__ = ["_BaseConfig", "_BaseTrainer", "add_hooks", "remove_hooks"]
