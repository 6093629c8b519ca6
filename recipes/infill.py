"""Story infilling with GFlowNet fine-tuning (Hu et al. 2024, §4.2).

    accelerate launch recipes/infill.py                                   # offline default: SmolLM2-135M on CPU, embedded stories
    accelerate launch recipes/infill.py --config recipes/configs/infill_gpt2-large.yaml --dataset stories.csv   # the paper's setting

Trains q(Z | X, Y) so that q(Z) ∝ p_LM(Z Y | X), where X is sentences 1-3 of a story, Y sentence 5 and Z sentence 4.
Before and after training it samples `eval_samples` infills for each of `num_eval` held-out stories and scores them
the same way: base-LM log p(Z Y | X) (mean and max), BLEU-4, GLEU-4 and BERTScore against the gold sentence 4.
Writes, under --output_dir: the adapter, metrics.json, samples.jsonl (sampled infills next to the gold ones).
"""

import os

os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

from trl import TrlParser  # noqa: E402

from gfn_trl import GFlowNetConfig, GFlowNetTrainer  # noqa: E402
from gfn_trl.data import tokenize_dataset  # noqa: E402
from gfn_trl.evaluation import sample_and_score  # noqa: E402
from gfn_trl.metrics import TextEncoder, default_encoder_path  # noqa: E402
from gfn_trl.recipe import (  # noqa: E402
    RecipeArguments,
    load_model_and_tokenizer,
    peft_config,
    print_summary,
    single_line_mask,
    save_run,
)
from gfn_trl.tasks import infill  # noqa: E402

# The offline CPU default: small enough to finish in a few minutes on 2 cores. The paper's values are in
# recipes/configs/infill_gpt2-large.yaml.
CPU_DEFAULTS = dict(
    output_dir="runs/infill", max_steps=24, per_device_train_batch_size=1, num_generations=8, learning_rate=5e-4,
    warmup_steps=4, max_completion_length=20, min_completion_length=5, reward_temperature_start=1.1,
    reward_temperature_end=0.85, reward_temperature_horizon=20, logging_steps=4, save_strategy="no", report_to="none",
    num_train=32, seed=0,
)


def main(recipe: RecipeArguments, args: GFlowNetConfig) -> dict:
    if recipe.trainer != "gfn":
        raise ValueError(f"--trainer {recipe.trainer} is not available yet for this recipe; use --trainer gfn.")
    model, tokenizer = load_model_and_tokenizer(recipe)
    stories = infill.load_stories(recipe.dataset)
    train, held_out = infill.split(stories, num_eval=min(recipe.num_eval, 100) if len(stories) < 1000 else 100)
    if recipe.num_train:
        train = train.select(range(min(recipe.num_train, len(train))))
    held_out = held_out.select(range(min(recipe.num_eval, len(held_out))))

    trainer = GFlowNetTrainer(model, args, train_dataset=infill.to_contract(train), processing_class=tokenizer,
                              peft_config=peft_config(recipe),
                              vocab_mask=single_line_mask(tokenizer) if recipe.ban_newlines else None)
    eval_rows = list(tokenize_dataset(infill.to_contract(held_out), tokenizer, model.config, args.max_completion_length, "eval"))
    policy = trainer.accelerator.unwrap_model(trainer.model)
    encoder = TextEncoder(default_encoder_path())

    def run_eval(disable_adapter):
        return sample_and_score(policy, trainer.reward, tokenizer, trainer.constraints, eval_rows, recipe.eval_samples,
                                recipe.eval_temperature, seed=args.seed, disable_adapter=disable_adapter)

    metrics, scored = {}, {}
    if not recipe.skip_baseline:
        scored["prompting"] = run_eval(disable_adapter=True)  # the untuned LM, same prompt, same sampler
        metrics["prompting"] = infill.evaluate(scored["prompting"], encoder)
    trainer.train()
    scored["gfn"] = run_eval(disable_adapter=False)
    metrics["gfn"] = infill.evaluate(scored["gfn"], encoder)

    samples = [
        {"method": method, "prompt": s.row["prompt"], "gold": s.row["gold"], "samples": s.texts,
         "log_likelihood": s.log_likelihood}
        for method, rows in scored.items() for s in rows
    ]
    save_run(trainer, recipe, args, metrics, samples)
    if trainer.accelerator.is_main_process:
        examples = [{"story": s.row["prompt"].replace("\n", " | "), "gold": s.row["gold"],
                     **{f"{m} sample": scored[m][i].texts[0] for m in scored}} for i, s in enumerate(scored["gfn"][:3])]
        print_summary("story infilling", metrics, examples)
    trainer.end()
    return metrics


def make_parser():
    parser = TrlParser((RecipeArguments, GFlowNetConfig))
    parser.set_defaults(**CPU_DEFAULTS)
    return parser


if __name__ == "__main__":
    recipe_args, train_args = make_parser().parse_args_and_config()
    main(recipe_args, train_args)
