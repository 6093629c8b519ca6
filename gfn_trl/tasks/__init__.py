"""The paper's four tasks and the diverse-reasoning task (issue 16): data loading (real formats and the embedded
offline data), templates, evaluation, and the `Task` each recipe runs (`base.Task`; `gfn_trl.runner.run` holds the
recipes' skeleton)."""

from pathlib import Path

DATA_DIR = Path(__file__).parent / "data"
# the recipes: recipes/<task>.py, `<task>.TASK`
TASKS = ("infill", "continuation", "subjectivity", "arithmetic", "diverse_reasoning")
