"""The recipes' one skeleton: `run(task, recipe, args, task_args)`.

    check -> load data -> load model -> optional stage (task) -> build trainer -> replay seeds -> baseline evaluation
    -> train -> evaluation (the trainer, then the methods a task derives from it) -> save and record -> summary

Everything task-specific is a hook of the `gfn_trl.tasks.base.Task` (data, templates, vocabulary, seeds, metrics,
examples); everything else is here, once.
"""

from __future__ import annotations

import importlib
import warnings

from ..progress import progress_label, say, set_progress
from ..tasks.base import Evaluated, RunContext, Task, seed_replay_buffer
from .arguments import RecipeArguments
from .build import build_trainer, load_model_and_tokenizer
from .checks import check_train_rows, validate
from .outputs import log_final_metrics, print_summary, save_run, write_run_card

# Deprecation warnings that a recipe run gets from inside its libraries, not from anything it passes them, and that a
# user cannot act on: PEFT (0.21) reads transformers' deprecated `is_gradient_checkpointing` when it wraps a model,
# and TRL's GRPO/RLOO call the deprecated `gradient_checkpointing_enable` / `_disable`.
_LIBRARY_DEPRECATIONS = (
    r"`is_gradient_checkpointing` is deprecated", r"`gradient_checkpointing_(enable|disable)` is deprecated",
)


def _quiet_library_deprecations() -> None:
    for message in _LIBRARY_DEPRECATIONS:
        warnings.filterwarnings("ignore", message=message, category=FutureWarning)


def get_task(task: Task | str) -> Task:
    """`task` itself, or the `TASK` of `gfn_trl.tasks.<task>` for a name ("infill", ...: `gfn_trl.tasks.TASKS`).

    Raises:
        ValueError: an unknown name.
    """
    if not isinstance(task, str):
        return task
    from ..tasks import TASKS

    if task not in TASKS:
        raise ValueError(f"Unknown task {task!r}; choose one of {', '.join(TASKS)}.")
    return importlib.import_module(f"..tasks.{task}", __package__).TASK


def check(task: Task | str, recipe: RecipeArguments, args, task_args=None) -> None:
    """Every argument, file and package a run of `task` needs, checked before any model loads: the task's own
    checks, `validate` with its `spec`, data flags and tool, then what full fine-tuning cannot do
    (`check_full_fine_tuning`).

    Raises:
        ValueError / FileNotFoundError / ModuleNotFoundError: naming the flag, file or package and the fix.
    """
    task = get_task(task)
    ctx = RunContext(recipe, args, task_args)
    task.check(ctx)
    validate(recipe, args, task.spec, tool=task.uses_tool(ctx), data=task.data_sources(ctx))
    check_full_fine_tuning(task, ctx)  # after validate's trainer choice: GRPO, RLOO and SFT need LoRA anyway


def check_full_fine_tuning(task: Task, ctx: RunContext) -> None:
    """A run without LoRA (--use_peft false or --lora_r 0: the policy is the model itself) refuses, before any model
    loads, what needs the policy's adapter (`Task.adapter_uses`: the untuned baselines, --decoding, a task's own
    uses), naming the flags that turn them off; they failed with an AttributeError after loading (or training).

    Raises:
        ValueError: full fine-tuning with any such use.
    """
    if ctx.recipe.use_peft and ctx.recipe.lora_r > 0:
        return
    uses = task.adapter_uses(ctx)
    if uses:
        raise ValueError("This run fully fine-tunes (--use_peft false or --lora_r 0), and these need the policy's "
                         f"LoRA adapter: {'; '.join(why for _, why in uses)}. Pass "
                         f"{', '.join(off for off, _ in uses)}, or keep LoRA on (--use_peft true, --lora_r > 0).")


def run(task: Task | str, recipe: RecipeArguments, args, task_args=None) -> dict[str, dict[str, float]]:
    """Train `recipe.trainer` on `task` (a `Task`, or its name: `get_task`) and evaluate it against the task's
    baselines; write the output directory.

    1. `check` (before anything expensive); 2. the task's data (`load`); 3. the model and tokenizer; 4. the task's
    optional stage (`prepare_model`, e.g. the story LM); 5. the trainer (`build_trainer`: the task's data contract,
    vocabulary mask and tool); 6. GFlowNet only: the task's replay seeds; 7. the baselines on the untuned LM (unless
    `--skip_baseline`) and the `--decoding` methods; 8. training; 9. the trained policy's evaluation (the task's
    `trained_methods`: the trainer, then any method derived from it, e.g. subjectivity's M-step); 10. the output
    directory (`save_run`: policy, tokenizer, metrics.json, samples.jsonl, policy_check.json; `log_final_metrics`:
    the metrics through `trainer.log` / `log_metrics` / `save_metrics`, trainer_state.json; `write_run_card`:
    README.md), pushed to the hub under `--push_to_hub`; 11. the summary, on the main process.

    Returns:
        {method: {metric: value}}: the baselines, the decoding methods, then `recipe.trainer`.
    Raises:
        ValueError / FileNotFoundError / ModuleNotFoundError: from `check` and the task's `load`, before any model
            is loaded.
    """
    from ..trainers.gflownet_trainer import GFlowNetTrainer
    from ..trainers.setup import seed_run

    task = get_task(task)
    check(task, recipe, args, task_args)
    set_progress(not args.disable_tqdm)  # the bars of the phases outside the Trainer's loop follow its switch
    _quiet_library_deprecations()
    seed_run(args)  # every model built below (task stage, LoRA, TRL baselines) starts from the run's seed
    ctx = RunContext(recipe, args, task_args)
    data = task.load(ctx)
    check_train_rows(recipe, args, len(data.train))
    ctx.model, ctx.tokenizer = load_model_and_tokenizer(recipe, args)
    modified = task.prepare_model(ctx, data)
    ctx.tool = task.make_tool(ctx)
    contract = task.to_contract(ctx, data)
    ctx.built = build_trainer(recipe, args, ctx.model, ctx.tokenizer, contract,
                              vocab_mask=task.vocab_mask(ctx), gold_column="gold" if task.spec.gold else None,
                              allow_decoding=task.spec.decoding, tool=ctx.tool,
                              base_modified=modified,  # a changed model is saved as the adapter's base
                              reward_funcs=task.reward_funcs(ctx))
    trainer, method = ctx.built.trainer, recipe.trainer

    seeded = 0
    seeds = task.replay_seeds(ctx, data) if isinstance(trainer, GFlowNetTrainer) else None  # off-policy seeds
    if seeds is not None:
        seeded = seed_replay_buffer(trainer, seeds.latents)
        if seeds.what is not None:
            say(f"Replay buffer seeded with {seeded} {seeds.what}.")

    task.prepare_evaluation(ctx, data)
    results: dict[str, Evaluated] = {}
    before = [] if recipe.skip_baseline else list(task.baseline_methods(ctx))
    for name in [*before, *(recipe.decoding or [])]:  # the untuned LM, same prompts, same sampler and scoring
        with progress_label(name):
            results[name] = task.evaluate(ctx, name)
    def save(failed: str | None = None) -> dict[str, dict[str, float]]:  # the policy and what was evaluated so far
        metrics = {name: r.metrics for name, r in results.items()}
        save_run(trainer, recipe, args, metrics, task.samples(ctx, results), ctx.built, results[method].first_rows(),
                 task.spec.name, failed)
        return metrics

    trainer.train()
    for i, name in enumerate(task.trained_methods(ctx)):  # the trained policy, then what a task derives from it
        with progress_label(name):
            try:
                results[name] = task.evaluate(ctx, name)
            except BaseException:
                if i:  # a derived method failed (e.g. out of memory): keep the trained policy and what was evaluated
                    save(failed=name)
                    say(f"{name} failed after training; the trained policy and the results of "
                        f"{', '.join(results)} are saved in {args.output_dir}.")
                raise

    metrics = save()
    log_final_metrics(trainer, metrics)
    prompt = contract["prompt"][0] if len(contract) and isinstance(contract["prompt"][0], str) else None
    write_run_card(trainer, recipe, args, task.spec.name, metrics, ctx.built, prompt, modified, task.spec.summary)
    if args.push_to_hub:
        from ..trainers.model_card import push_output_dir

        push_output_dir(trainer, args.output_dir)
    if trainer.accelerator.is_main_process:
        summary = task.summary(ctx, data, results, seeded)
        if summary.note is not None:
            print(summary.note)
        print_summary(summary.title, metrics, summary.examples)
    trainer.end()
    return metrics
