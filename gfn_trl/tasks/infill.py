"""Story infilling (paper §4.2): given sentences 1-3 (X) and 5 (Y) of a five-sentence story, sample sentence 4 (Z).

Data: ROCStories' column format (`sentence1` .. `sentence5`), from a CSV file, a hub dataset id, or the embedded
`tasks/data/stories.csv` (120 stories written for this project).  The paper trains on rows 100-999 and evaluates on
rows 0-99 (with 1,000 or more rows we do the same; smaller sets hold out their first `num_eval` rows).

Data contract (the paper's p(X Z Y), as in its `main_infill.py`):
    prompt         "Beginning: {s1} {s2} {s3}\\nEnding: {s5}\\nMiddle:"   (the policy sees X and Y)
    reward_prompt  "{s1} {s2} {s3}"                                        (the reward LM sees untemplated X ...)
    suffix         " {s5}"                                                  (... then Z, then Y)
    gold           " {s4}"
Deviation: the authors tokenised Y without its leading space, so Z's final period was glued to Y's first word; we
keep natural spacing.
"""

from __future__ import annotations

import os

from datasets import Dataset, load_dataset

from ..data import tokenize_dataset
from ..evaluation import Scored, likelihood_summary
from ..evaluation.text_metrics import TextEncoder, default_encoder_path, infill_scores
from ..tokenization import encode_continuation
from . import DATA_DIR
from .base import Evaluated, ReplaySeeds, RunContext, Summary, Task, TaskData, TaskSpec
from .files import is_local_file, load_data, read_table
from .lm_stage import finetune_lm

SENTENCES = [f"sentence{i}" for i in range(1, 6)]
EMBEDDED = DATA_DIR / "stories.csv"


def load_stories(source: str | None = None) -> Dataset:
    """Stories with columns sentence1..sentence5: the embedded CSV (None), a local CSV file, or a hub dataset id."""
    if source is None:
        source = str(EMBEDDED)
    if source.endswith(".csv"):
        if not os.path.exists(source):
            raise FileNotFoundError(f"Story file {source} does not exist.")
        ds = load_dataset("csv", data_files=source, split="train")
    else:
        ds = load_dataset(source, split="train")
    missing = [c for c in SENTENCES if c not in ds.column_names]
    if missing:
        raise ValueError(
            f"{source} lacks the ROCStories columns {missing} (has {ds.column_names}). The infilling task needs "
            "sentence1 .. sentence5, one story per row."
        )
    for i, row in enumerate(ds):
        for c in SENTENCES:
            if not isinstance(row[c], str) or not row[c].strip():
                raise ValueError(f"Row {i} of {source} has an empty {c}: every story needs five non-empty sentences.")
    return ds


def split(stories: Dataset, num_eval: int = 100) -> tuple[Dataset, Dataset]:
    """The paper's split: evaluation rows 0-99, training rows 100-999; smaller sets hold out their first rows."""
    if len(stories) >= 1000:
        return stories.select(range(100, 1000)), stories.select(range(100))
    if len(stories) <= num_eval:
        raise ValueError(f"{len(stories)} stories cannot give {num_eval} evaluation stories and a training set.")
    return stories.select(range(num_eval, len(stories))), stories.select(range(num_eval))


def to_contract(stories: Dataset) -> Dataset:
    """ROCStories rows -> the trainer's columns (prompt, reward_prompt, suffix) plus the gold infill."""

    def row(r):
        beginning = " ".join(r[c].strip() for c in SENTENCES[:3])
        return {
            "prompt": f"Beginning: {beginning}\nEnding: {r['sentence5'].strip()}\nMiddle:",
            "reward_prompt": beginning,
            "suffix": " " + r["sentence5"].strip(),
            "gold": " " + r["sentence4"].strip(),
        }

    return stories.map(row, remove_columns=stories.column_names)


def evaluate(scored: list[Scored], encoder=None) -> dict[str, float]:
    """Base-LM log-likelihood of the infills (log p(Z Y | X)) and BLEU-4 / GLEU-4 / BERTScore against the gold s4."""
    metrics = likelihood_summary(scored)
    per_story = [infill_scores(s.texts, s.row["gold"], encoder) for s in scored]
    for key in per_story[0]:
        metrics[key] = sum(p[key] for p in per_story) / len(per_story)
    return metrics


def story_texts(stories: Dataset) -> list[str]:
    """Whole stories, "s1 s2 s3 s4 s5" (the text the paper fine-tunes its story LM on, `make_sft_data.py`)."""
    return [" ".join(r[c].strip() for c in SENTENCES) for r in stories]


def finetune_story_lm(model, tokenizer, stories: Dataset, max_steps: int, learning_rate: float = 1e-4,
                      batch_size: int = 8, seed: int = 0, output_dir: str | None = None):
    """The paper's first stage: the LM fully fine-tuned on whole training stories with TRL's `SFTTrainer` (the paper:
    GPT-2 Large, 50 epochs over rows 100-999; `gfn_trl.tasks.lm_stage.finetune_lm`, the stage every task shares).
    The GFlowNet policy and its reward both start from the result, and so do the prompting baseline and the
    evaluation likelihood.  Returns the fine-tuned model (in eval mode)."""
    return finetune_lm(model, tokenizer, story_texts(stories), max_steps, learning_rate, batch_size=batch_size,
                       seed=seed, output_dir=output_dir, max_length=128, name="story_lm")


# ---------------------------------------------------------------------------------------------------------------------
# The recipe's task (recipes/infill.py): its arguments are `seed_gold`, `story_lm_steps`, `story_lm_learning_rate`


def read_stories(source: str | None) -> Dataset:
    """A local .csv / .tsv file (any case of extension; errors name the line, `read_table`), else the embedded
    stories or a hub dataset id (`load_stories`)."""
    if is_local_file(source):
        return read_table(os.path.expanduser(source), tuple(SENTENCES))
    return load_stories(source)


class InfillTask(Task):
    """Story infilling: the story LM stage (`--story_lm_steps`), gold sentence 4 in the replay buffer
    (`--seed_gold`), the untuned LM as the `prompting` baseline; metrics of `evaluate`; latents on one line
    (`--ban_newlines`, the default vocabulary mask)."""

    # ROCStories-format CSV (or TSV) files, gold infills for --trainer sft, the sentence encoder of BERTScore
    spec = TaskSpec(
        "infill", data_formats=(".csv", ".tsv"), data_columns=tuple(SENTENCES), gold=True, encoder=True,
        summary=(
            "story infilling (Hu et al. 2024, §4.2): given sentences 1-3 (X) and 5 (Y) of a five-sentence story, "
            "sample sentence 4 (Z) from the posterior p(Z | X, Y) ∝ p_LM(X Z Y)."
        ),
    )
    baselines = ("prompting",)  # the untuned LM, same prompt, same sampler

    def check(self, ctx: RunContext) -> None:
        if ctx.task_args.story_lm_steps < 0:
            raise ValueError("--story_lm_steps must be 0 (no story-LM stage) or more.")
        if ctx.task_args.story_lm_steps and not ctx.task_args.story_lm_learning_rate > 0:
            raise ValueError(f"--story_lm_learning_rate must be > 0 with --story_lm_steps "
                             f"{ctx.task_args.story_lm_steps}, got {ctx.task_args.story_lm_learning_rate}.")

    def load(self, ctx: RunContext) -> TaskData:
        recipe = ctx.recipe
        stories = load_data(read_stories, recipe.dataset)
        train, held_out = split(stories, num_eval=min(recipe.num_eval, 100) if len(stories) < 1000 else 100)
        stories = train  # the story LM trains on every training story, before --num_train subsamples them
        if recipe.num_train:
            train = train.select(range(min(recipe.num_train, len(train))))
        held_out = held_out.select(range(min(recipe.num_eval, len(held_out))))
        return TaskData(train, held_out, extra={"stories": stories})

    def prepare_model(self, ctx: RunContext, data: TaskData) -> bool:
        t = ctx.task_args
        if t.story_lm_steps <= 0:
            return False
        ctx.model = finetune_story_lm(ctx.model, ctx.tokenizer, data.extra["stories"], t.story_lm_steps,
                                      t.story_lm_learning_rate, seed=ctx.args.seed)
        return True

    def to_contract(self, ctx: RunContext, data: TaskData) -> Dataset:
        return to_contract(data.train)

    def replay_seeds(self, ctx: RunContext, data: TaskData) -> ReplaySeeds | None:
        if not ctx.task_args.seed_gold:
            return None
        gold = [encode_continuation(ctx.tokenizer, g) for g in ctx.built.trainer.train_dataset["gold"]]  # as sampled
        return ReplaySeeds([[g] for g in gold], f"gold infills of {len(gold)} stories")

    def prepare_evaluation(self, ctx: RunContext, data: TaskData) -> None:
        rows = list(tokenize_dataset(to_contract(data.eval), ctx.tokenizer, ctx.model.config,
                                     ctx.built.constraints.max_length, "eval"))
        ctx.eval = rows, TextEncoder(default_encoder_path())

    def evaluate(self, ctx: RunContext, method: str) -> Evaluated:
        rows, encoder = ctx.eval
        scored = ctx.sample(rows, disable_adapter=method in self.baselines)
        return Evaluated(scored, evaluate(scored, encoder))

    def samples(self, ctx: RunContext, results: dict[str, Evaluated]) -> list[dict]:
        return [{"method": method, "prompt": s.row["prompt"], "gold": s.row["gold"], "samples": s.texts,
                 "log_likelihood": s.log_likelihood}
                for method, r in results.items() for s in r.scored]

    def summary(self, ctx: RunContext, data: TaskData, results: dict[str, Evaluated], seeded: int) -> Summary:
        trained = results[ctx.recipe.trainer].scored
        examples = [{"story": s.row["prompt"].replace("\n", " | "), "gold": s.row["gold"],
                     **{f"{m} sample": results[m].scored[i].texts[0] for m in results}}
                    for i, s in enumerate(trained[:3])]
        return Summary("story infilling", examples)


TASK = InfillTask()
