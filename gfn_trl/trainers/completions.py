"""The `log_completions` table: latents sampled during training or evaluation, printed and sent to the trackers.

One row per latent: the prompt, the latent decoded, its untempered log R(Z ⊤) (natural log), the behaviour that
produced it (`on_policy`, `tempered`, `replay`) and the sampling temperature (1 for on-policy and replayed latents).
`RolloutTrainer.log` prints the table on the main process (with `rich` if it is installed, plain text otherwise) and
sends it to the trackers of `report_to` that take tables: TensorBoard (a Markdown table in the text plugin, under the
tag `completions` or `eval_completions`), Weights & Biases and Trackio (a `Table`).
"""

from __future__ import annotations

import random

from transformers.utils import logging

logger = logging.get_logger(__name__)

COLUMNS = ("step", "prompt", "latent", "log_reward", "behaviour", "temperature")
# The trackers that take a table; the others in report_to get the scalars only
TABLE_TRACKERS = ("tensorboard", "wandb", "trackio")


def _cell(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def choose_rows(rows: list[dict], n: int | None, seed: int) -> list[dict]:
    """`n` of `rows` chosen at random by `seed` (in their order), or all of them when `n` is None or larger.  A
    private generator: printing never moves the global random state (training must not depend on logging)."""
    if n is None or n >= len(rows):
        return list(rows)
    keep = sorted(random.Random(seed).sample(range(len(rows)), n))
    return [rows[i] for i in keep]


def plain_table(rows: list[dict], columns=COLUMNS) -> str:
    """The rows as an aligned plain-text table (newlines in cells shown as "⏎")."""
    cells = [[_cell(r[c]).replace("\n", "⏎") for c in columns] for r in rows]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(columns)]
    line = lambda values: "  ".join(v.ljust(w) for v, w in zip(values, widths)).rstrip()  # noqa: E731
    return "\n".join([line(columns), line(["-" * w for w in widths])] + [line(row) for row in cells])


def markdown_table(rows: list[dict], columns=COLUMNS) -> str:
    """The rows as a Markdown table (what TensorBoard's text plugin renders); `|` and newlines escaped."""
    def esc(v):
        return _cell(v).replace("|", "\\|").replace("\n", "<br>")

    head = "| " + " | ".join(columns) + " |\n|" + "---|" * len(columns)
    return "\n".join([head] + ["| " + " | ".join(esc(r[c]) for c in columns) + " |" for r in rows])


def print_table(rows: list[dict], title: str) -> None:
    """Print the rows on stdout: a `rich` table if `rich` is installed (cells as plain text, never markup), plain
    text otherwise."""
    try:
        from rich.console import Console
        from rich.table import Table
        from rich.text import Text
    except ImportError:
        print(f"{title}\n{plain_table(rows)}", flush=True)
        return
    table = Table(title=Text(title), show_lines=True)
    for c in COLUMNS:
        table.add_column(c, justify="right" if c in ("step", "log_reward", "temperature") else "left")
    for r in rows:  # as plain text: a prompt or latent is not rich markup ("[/INST]" would raise a MarkupError)
        table.add_row(*[Text(_cell(r[c])) for c in COLUMNS])
    Console().print(table)


def send_to_trackers(rows: list[dict], tag: str, step: int, report_to: list[str], callbacks: list) -> list[str]:
    """Send the table to the trackers of `report_to` that take tables; returns the names it was sent to.

    TensorBoard: through the writer of the Trainer's `TensorBoardCallback` (opened by its first `on_log`), as
    Markdown text at `step`.  wandb / trackio: `log({tag: Table})` on their current run."""
    sent = []
    if not rows:
        return sent
    if "tensorboard" in report_to:
        from transformers.integrations import TensorBoardCallback

        for cb in callbacks:
            if isinstance(cb, TensorBoardCallback) and cb.tb_writer is not None:
                cb.tb_writer.add_text(tag, markdown_table(rows), step)
                cb.tb_writer.flush()
                sent.append("tensorboard")
    if "wandb" in report_to:
        import wandb

        if wandb.run is not None:
            wandb.log({tag: wandb.Table(columns=list(COLUMNS), data=[[r[c] for c in COLUMNS] for r in rows])})
            sent.append("wandb")
    if "trackio" in report_to:
        import trackio

        trackio.log({tag: trackio.Table(columns=list(COLUMNS), data=[[r[c] for c in COLUMNS] for r in rows])})
        sent.append("trackio")
    return sent
