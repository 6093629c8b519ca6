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
metrics.json, samples.jsonl (sampled continuations per prompt) and policy_check.json; see gfn_trl.runner.save_run.
"""

import os

os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

from gfn_trl import runner  # noqa: E402  (lazy: `--help` imports the arguments only)

TASK = "continuation"  # gfn_trl.tasks.continuation.TASK, imported when the run starts

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


def check(recipe: runner.RecipeArguments, args) -> None:
    """Every argument, file and package the run needs, checked before any model loads (`gfn_trl.runner.check`)."""
    runner.check(TASK, recipe, args)


def main(recipe: runner.RecipeArguments, args) -> dict:
    return runner.run(TASK, recipe, args)


def make_parser(argv=None):
    return runner.make_recipe_parser(CPU_DEFAULTS, argv=argv, task=TASK, description=__doc__)


if __name__ == "__main__":
    recipe_args, train_args = make_parser().parse_args_and_config()
    main(recipe_args, train_args)
