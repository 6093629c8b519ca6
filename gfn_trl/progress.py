"""Progress bars for the long phases outside the HF Trainer's own loop: evaluation sampling, decoding baselines,
replay seeding, encoder batches, a task's stage before training, `compare`'s runs.

One rule for all of them: a tqdm bar on the main process only (never one per rank), and none when progress bars are
off: `set_progress(False)` (the recipes call `set_progress(not args.disable_tqdm)`, so `--disable_tqdm true` turns
off these bars, and transformers' and datasets' own, with the Trainer's), or transformers' global switch
(`transformers.utils.logging.disable_progress_bar()`).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar

_enabled: bool | None = None  # None: follow transformers' switch
_label: ContextVar[str | None] = ContextVar("gfn_trl_progress_label", default=None)
_turned_off: list = []  # the enable functions of other libraries' bars that `set_progress(False)` turned off


def set_progress(enabled: bool | None) -> None:
    """Turn gfn_trl's progress bars on or off (None: follow transformers' global switch).  Off also turns off the
    bars of transformers (e.g. saving shards) and datasets (`map`) that were on; on again turns those back on."""
    global _enabled
    _enabled = enabled
    if enabled is False:
        from transformers.utils import logging

        if logging.is_progress_bar_enabled():
            logging.disable_progress_bar()
            _turned_off.append(logging.enable_progress_bar)
        try:
            import datasets
        except ImportError:  # pragma: no cover - datasets is a dependency
            return
        if datasets.is_progress_bar_enabled():
            datasets.disable_progress_bars()
            _turned_off.append(datasets.enable_progress_bars)
    else:
        while _turned_off:
            _turned_off.pop()()


def is_main_process() -> bool:
    """This process is the main one of its run: Accelerate's state when it is set up, else the launcher's RANK."""
    try:
        from accelerate import PartialState

        if PartialState._shared_state:  # set up (by the Trainer, `accelerate launch`, ...): ask it
            return PartialState().is_main_process
    except ImportError:  # pragma: no cover - accelerate is a dependency
        pass
    return os.environ.get("RANK", "0") == "0"


def say(*args, **kwargs) -> None:
    """`print` on the main process only (`is_main_process`): a run's messages once, however many processes run it."""
    if is_main_process():
        print(*args, **kwargs)


def progress_enabled() -> bool:
    """Whether a bar would show here: main process, and bars on (`set_progress`, else transformers' switch)."""
    if _enabled is None:
        from transformers.utils import logging

        on = logging.is_progress_bar_enabled()
    else:
        on = _enabled
    return on and is_main_process()


@contextmanager
def progress_label(label: str | None) -> Iterator[None]:
    """Prefix the bars opened inside the block with `label` (e.g. the method being evaluated: "gfn: sampling")."""
    token = _label.set(label)
    try:
        yield
    finally:
        _label.reset(token)


def progress(iterable: Iterable | None = None, desc: str | None = None, total: int | None = None, unit: str = "it",
             leave: bool = False):
    """`tqdm(iterable, desc=..., total=..., unit=...)`, disabled where `progress_enabled()` is False (it then only
    iterates).  Use it as an iterable wrapper or, with `total`, as a context manager with `.update(n)`."""
    from tqdm.auto import tqdm

    label = _label.get()
    desc = f"{label}: {desc}" if label and desc else label or desc
    return tqdm(iterable, desc=desc, total=total, unit=unit, leave=leave, disable=not progress_enabled(),
                dynamic_ncols=True)
