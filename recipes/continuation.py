"""Sentence continuation with GFlowNet fine-tuning (Hu et al. 2024, §4.1), or PPO / GRPO / RLOO (`--trainer`).

    # offline default: SmolLM2-135M on CPU, embedded prompts
    accelerate launch recipes/continuation.py
    # the paper's setting
    accelerate launch recipes/continuation.py --config recipes/configs/continuation_gpt2-xl.yaml --dataset prompts.txt

Trains q(Z | X) so that q(Z) ∝ p_LM(Z "." | X)^(1/T), where X is a prompt of 1-3 sentences (ending with a space),
Z the next sentence and "." the stop action; T_R goes linearly from 1.0 to 0.8.  The latent vocabulary is the
paper's ban list (`gfn_trl.tasks.continuation.vocab_mask`; it always applies, so --ban_newlines has no effect).
Before and after training it samples `eval_samples` continuations for each of `num_eval` held-out prompts with the
same sampler, from the untuned LM (the adapter disabled: the paper's "LM" baseline) and from the GFlowNet policy,
and scores both the same way: base-LM log p(Z "." | X) (mean and max) and embedding diversity.
Writes, under --output_dir: the adapter and tokenizer (the GGUF default's de-quantized base in `base_model/`),
metrics.json, samples.jsonl (sampled continuations per prompt) and policy_check.json; see gfn_trl.recipe.save_run.
"""

import functools
import os

os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

from gfn_trl.baselines import decode  # noqa: E402
from gfn_trl.data import tokenize_dataset  # noqa: E402
from gfn_trl.evaluation import sample_and_score, score_tokens  # noqa: E402
from gfn_trl.metrics import TextEncoder, default_encoder_path  # noqa: E402
from gfn_trl.recipe import (  # noqa: E402
    RecipeArguments,
    TaskSpec,
    build_trainer,
    check_train_rows,
    load_data,
    load_model_and_tokenizer,
    make_recipe_parser,
    print_summary,
    save_run,
    validate,
)
from gfn_trl.tasks import continuation  # noqa: E402

# The offline CPU default: small enough to finish in a few minutes on 2 cores (8 prompts seen 3 times each, so that
# replay is exercised). The paper's values are in
# recipes/configs/continuation_gpt2-xl.yaml.
CPU_DEFAULTS = dict(
    output_dir="runs/continuation", max_steps=24, per_device_train_batch_size=1, num_generations=8,
    learning_rate=5e-4, warmup_steps=4, max_completion_length=12, min_completion_length=1, stop_token=".",
    reward_temperature_start=1.0, reward_temperature_end=0.8, reward_temperature_horizon=24,
    on_policy_prob=0.2505, tempered_prob=0.4995, replay_prob=0.25, replay_prioritized=False,
    replay_sim_tolerance=0.25, logging_steps=4, save_strategy="no", report_to="none", num_train=8, seed=0,
    strip_trailing_space=True,  # SmolLM2 splits ' 2' into ' ' + '2': a trailing space steers latents to digits
)

# What `validate` checks before any model is loaded: prompt files, no gold latents (no --trainer sft), the sentence
# encoder of the diversity metric, --decoding baselines
SPEC = TaskSpec("continuation", data_formats=(".txt", ".jsonl"), gold=False, encoder=True, decoding=True)


def check(recipe: RecipeArguments, args) -> None:
    """Every argument, file and package the run needs, checked before any model loads (`gfn_trl.recipe.validate`)."""
    if args.stop_token is None:
        raise ValueError('Sentence continuation ends a latent with "."; set --stop_token "."')
    validate(recipe, args, SPEC)


def main(recipe: RecipeArguments, args) -> dict:
    check(recipe, args)
    prompts = load_data(continuation.load_prompts, recipe.dataset)
    train, held_out = continuation.split(prompts, num_eval=min(recipe.num_eval, 50) if len(prompts) < 1000 else 50)
    if recipe.num_train:
        train = train.select(range(min(recipe.num_train, len(train))))
    check_train_rows(recipe, args, len(train))
    model, tokenizer = load_model_and_tokenizer(recipe, args)
    held_out = held_out.select(range(min(recipe.num_eval, len(held_out))))

    strip = recipe.strip_trailing_space
    built = build_trainer(recipe, args, model, tokenizer, continuation.to_contract(train, strip_trailing_space=strip),
                          vocab_mask=functools.partial(continuation.vocab_mask, stop_token=args.stop_token),
                          gold_column=None, allow_decoding=True)
    trainer, method, policy = built.trainer, recipe.trainer, built.policy
    eval_rows = list(tokenize_dataset(continuation.to_contract(held_out, strip_trailing_space=strip), tokenizer,
                                      model.config, built.constraints.max_length, "eval"))
    encoder = TextEncoder(default_encoder_path())

    def run_eval(disable_adapter):
        return sample_and_score(policy, built.reward, tokenizer, built.constraints, eval_rows, recipe.eval_samples,
                                recipe.eval_temperature, seed=args.seed, disable_adapter=disable_adapter)

    metrics, scored = {}, {}
    if not recipe.skip_baseline:
        scored["lm"] = run_eval(disable_adapter=True)  # the untuned LM, ancestral sampling with the same sampler
        metrics["lm"] = continuation.evaluate(scored["lm"], encoder)
    for how in recipe.decoding or []:  # the paper's decoding baselines, on the untuned LM, scored the same way
        with policy.disable_adapter():
            latents = decode(policy, tokenizer, [r["prompt_ids"] for r in eval_rows], how, recipe.eval_samples,
                             built.constraints, temperature=recipe.decoding_temperature, seed=args.seed)
        scored[how] = score_tokens(built.reward, tokenizer, eval_rows, latents)
        metrics[how] = continuation.evaluate(scored[how], encoder)
    trainer.train()
    scored[method] = run_eval(disable_adapter=False)
    metrics[method] = continuation.evaluate(scored[method], encoder)

    samples = [
        {"method": method, "prompt": s.row["prompt"], "samples": s.texts, "log_likelihood": s.log_likelihood}
        for method, rows in scored.items() for s in rows
    ]
    save_run(trainer, recipe, args, metrics, samples, built, scored[method])
    if trainer.accelerator.is_main_process:
        examples = [{"prompt": s.row["prompt"],
                     **{f"{m} samples": " | ".join(t + "." for t in scored[m][i].texts[:3]) for m in scored}}
                    for i, s in enumerate(scored[method][:3])]
        print_summary("sentence continuation", metrics, examples)
    trainer.end()
    return metrics


def make_parser(argv=None):
    return make_recipe_parser(CPU_DEFAULTS, argv=argv)


if __name__ == "__main__":
    recipe_args, train_args = make_parser().parse_args_and_config()
    main(recipe_args, train_args)
