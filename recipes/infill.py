"""Story infilling with GFlowNet fine-tuning (Hu et al. 2024, §4.2), or PPO / GRPO / RLOO / SFT (`--trainer`).

    # offline default: SmolLM2-135M on CPU, embedded stories
    accelerate launch recipes/infill.py
    # the paper's setting
    accelerate launch recipes/infill.py --config recipes/configs/infill_gpt2-large.yaml --dataset stories.csv

Trains q(Z | X, Y) so that q(Z) ∝ p_LM(Z Y | X), where X is sentences 1-3 of a story, Y sentence 5 and Z sentence 4.
As in the paper, the LM is first fine-tuned on the whole training stories (`--story_lm_steps`, TRL's SFTTrainer; the
paper's config starts from such a checkpoint instead), and that story LM is the policy's start, the reward and the
evaluation likelihood; the gold sentence 4 of the training stories seeds the replay buffer (`--seed_gold`).
Before and after training it samples `eval_samples` infills for each of `num_eval` held-out stories and scores them
the same way: base-LM log p(Z Y | X) (mean and max), BLEU-4, GLEU-4 and BERTScore against the gold sentence 4.
Writes, under --output_dir: the adapter and tokenizer, the base they were trained on (`base_model/`: the story LM,
or the de-quantized GGUF default; a hub or local base is referenced, not copied), metrics.json, samples.jsonl (sampled
infills next to the gold ones) and policy_check.json; `AutoPeftModelForCausalLM.from_pretrained(output_dir)` reloads
the evaluated policy.  Every argument, file and package is checked before the model is loaded.
"""

import os
from dataclasses import dataclass, field

os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

from gfn_trl import GFlowNetTrainer  # noqa: E402
from gfn_trl.data import tokenize_dataset  # noqa: E402
from gfn_trl.evaluation import sample_and_score  # noqa: E402
from gfn_trl.metrics import TextEncoder, default_encoder_path  # noqa: E402
from gfn_trl.recipe import (  # noqa: E402
    RecipeArguments,
    TaskSpec,
    build_trainer,
    check_train_rows,
    is_local_file,
    load_data,
    load_model_and_tokenizer,
    make_recipe_parser,
    print_summary,
    read_table,
    save_run,
    single_line_mask,
    validate,
)
from gfn_trl.tasks import infill  # noqa: E402
from gfn_trl.tokenization import encode_continuation  # noqa: E402

# The offline CPU default: 11 minutes with `accelerate launch` (one thread), 7 with `python` on 2 cores. The paper's
# values are in recipes/configs/infill_gpt2-large.yaml.  As in the paper, the LM is first fine-tuned on the training
# stories (the paper: GPT-2 Large, 50 epochs; here 60 steps of 8 stories, ~4 epochs of the 112 embedded training
# stories, ~3 min):
# SmolLM2-135M-Instruct is not a story model, and with it as the reward the GFlowNet learns degenerate high-likelihood
# infills (" to, to, to, before her, later.") that score below prompting on BLEU and BERTScore.
CPU_DEFAULTS = dict(
    output_dir="runs/infill", max_steps=24, per_device_train_batch_size=1, num_generations=8, learning_rate=5e-4,
    warmup_steps=4, max_completion_length=20, min_completion_length=5, reward_temperature_start=1.1,
    reward_temperature_end=0.85, reward_temperature_horizon=20, logging_steps=4, save_strategy="no", report_to="none",
    num_train=32, seed=0, story_lm_steps=60, story_lm_learning_rate=1e-4, seed_gold=True,
)

# What `validate` checks before any model is loaded: ROCStories-format CSV (or TSV) files, gold infills for
# --trainer sft, the sentence encoder of BERTScore
SPEC = TaskSpec("infill", data_formats=(".csv", ".tsv"), data_columns=tuple(infill.SENTENCES), gold=True,
                encoder=True)


def load_stories(source: str | None):
    """A local .csv / .tsv file (any case of extension; errors name the line), else the embedded stories or a hub
    dataset id (`gfn_trl.tasks.infill.load_stories`)."""
    if is_local_file(source):
        return read_table(os.path.expanduser(source), tuple(infill.SENTENCES))
    return infill.load_stories(source)


@dataclass
class InfillArguments:
    seed_gold: bool = field(default=True, metadata={
        "help": "GFlowNet: put the gold sentence 4 of every training story in the replay buffer before training, as "
                "the paper does (those longer than max_completion_length are skipped)."})
    story_lm_steps: int = field(default=0, metadata={
        "help": "First fine-tune the LM on the whole training stories for this many steps (TRL SFTTrainer, full "
                "fine-tuning), as the paper does: the policy, the reward, the prompting baseline and the evaluation "
                "likelihood then all use that story LM. 0: use the model as loaded."})
    story_lm_learning_rate: float = field(default=1e-4, metadata={"help": "Learning rate of the story LM stage."})


def check(recipe: RecipeArguments, args, task: InfillArguments | None = None) -> None:
    """Every argument, file and package the run needs, checked before any model loads (`gfn_trl.recipe.validate`)."""
    validate(recipe, args, SPEC)
    if (task or InfillArguments()).story_lm_steps < 0:
        raise ValueError("--story_lm_steps must be 0 (no story-LM stage) or more.")


def main(recipe: RecipeArguments, args, task: InfillArguments | None = None) -> dict:
    task = task or InfillArguments()
    check(recipe, args, task)
    stories = load_data(load_stories, recipe.dataset)
    train, held_out = infill.split(stories, num_eval=min(recipe.num_eval, 100) if len(stories) < 1000 else 100)
    check_train_rows(recipe, args, min(recipe.num_train or len(train), len(train)))
    model, tokenizer = load_model_and_tokenizer(recipe, args)
    if task.story_lm_steps > 0:  # on every training story, before --num_train subsamples them for the GFlowNet
        model = infill.finetune_story_lm(model, tokenizer, train, task.story_lm_steps, task.story_lm_learning_rate,
                                         seed=args.seed)
    if recipe.num_train:
        train = train.select(range(min(recipe.num_train, len(train))))
    held_out = held_out.select(range(min(recipe.num_eval, len(held_out))))

    built = build_trainer(recipe, args, model, tokenizer, infill.to_contract(train),
                          vocab_mask=single_line_mask(tokenizer) if recipe.ban_newlines else None, gold_column="gold",
                          base_modified=task.story_lm_steps > 0)  # the story LM is saved as the adapter's base
    trainer, method = built.trainer, recipe.trainer
    if task.seed_gold and isinstance(trainer, GFlowNetTrainer):
        gold = [encode_continuation(tokenizer, g) for g in trainer.train_dataset["gold"]]  # as the sampler writes
        print(f"Replay buffer seeded with {trainer.seed_replay_buffer(gold)} gold infills of {len(gold)} stories.")
    eval_rows = list(tokenize_dataset(infill.to_contract(held_out), tokenizer, model.config,
                                      built.constraints.max_length, "eval"))
    encoder = TextEncoder(default_encoder_path())

    def run_eval(disable_adapter):
        return sample_and_score(built.policy, built.reward, tokenizer, built.constraints, eval_rows,
                                recipe.eval_samples, recipe.eval_temperature, seed=args.seed,
                                disable_adapter=disable_adapter)

    metrics, scored = {}, {}
    if not recipe.skip_baseline:
        scored["prompting"] = run_eval(disable_adapter=True)  # the untuned LM, same prompt, same sampler
        metrics["prompting"] = infill.evaluate(scored["prompting"], encoder)
    trainer.train()
    scored[method] = run_eval(disable_adapter=False)
    metrics[method] = infill.evaluate(scored[method], encoder)

    samples = [
        {"method": method, "prompt": s.row["prompt"], "gold": s.row["gold"], "samples": s.texts,
         "log_likelihood": s.log_likelihood}
        for method, rows in scored.items() for s in rows
    ]
    save_run(trainer, recipe, args, metrics, samples, built, scored[method])
    if trainer.accelerator.is_main_process:
        examples = [{"story": s.row["prompt"].replace("\n", " | "), "gold": s.row["gold"],
                     **{f"{m} sample": scored[m][i].texts[0] for m in scored}}
                    for i, s in enumerate(scored[method][:3])]
        print_summary("story infilling", metrics, examples)
    trainer.end()
    return metrics


def make_parser(argv=None):
    return make_recipe_parser(CPU_DEFAULTS, InfillArguments, argv=argv)


if __name__ == "__main__":
    main(*make_parser().parse_args_and_config())
