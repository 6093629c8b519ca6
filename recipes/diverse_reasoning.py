"""Diverse correct reasoning: arithmetic rationales with a verifier reward and the LM as a prior (issue 16).

    accelerate launch recipes/diverse_reasoning.py                     # GFlowNet, offline default: SmolLM2-135M, CPU
    accelerate launch recipes/diverse_reasoning.py --trainer grpo      # TRL's GRPO, same reward, same sampling budget

Trains q(Z | X) towards log R(Z) = [α · log p_LM(Z "." | X) + log(ε + 1[Z's answer is right])] / T_R, with X three
gold demonstrations then "Question: 7 - 3 + 5 = ? Answer:", Z a rationale the policy writes itself (" 7 - 3 = 4,
4 + 5 = 9", no calculator) ended by the stop token ".", the verifier `CorrectAnswer` (gfn_trl/tasks/
diverse_reasoning.py) given to every trainer as a TRL reward function, and α = `--lm_reward_weight`.  At α = 1 and
T_R = 1 (the defaults) the target is the untuned LM conditioned on a right answer (the module docstring says why,
and why R must be > 0: ε = `--verifier_epsilon`).

Problems: 1-digit operands, + and -, 2 or 3 operands (the 135M model gets ~0 % of the paper's 3-5-operand problems
without a calculator); `num_eval` test problems drawn first from `--problem_seed` (the same for every run seed),
then 3 demonstrations and `num_train` training problems, disjoint from the tests.  No replay seeds: every trainer
learns from its own samples only.  Equal sampling budget: the defaults give every trainer 2 prompts × 4 latents a
step for the same number of steps (GRPO counts completions: its per_device_train_batch_size is 8).

Before (the untuned policy, `prompting`) and after training, `eval_samples` = k rationales per test problem at
temperature 1, and: `test/accuracy` (majority vote over the k answers), `test/pass@k`, `test/sample_accuracy`,
`test/distinct_correct` (distinct right rationales per problem: collapse onto one rationale shows as ≤ 1),
`test/distinct`, and the base-LM log-likelihood of the samples.  Writes, under --output_dir: the adapter and
tokenizer, metrics.json, samples.jsonl, policy_check.json (see gfn_trl.runner.save_run).
"""

import os
from dataclasses import dataclass, field

os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

from gfn_trl import runner  # noqa: E402  (lazy: `--help` imports the arguments only)

TASK = "diverse_reasoning"  # gfn_trl.tasks.diverse_reasoning.TASK, imported when the run starts

# The offline CPU default (README, "Diverse correct reasoning"): 13-14 min a run on 2 cores shared with other jobs
# (load ~7; the run is single-threaded, ~7.5 min of CPU time for the GFlowNet), of which the two evaluations take ~3
# min each:
# * 2 prompts x 4 latents a step, 16 steps, LoRA r 16 at 5e-4 for every trainer;
# * max_completion_length 20 holds the longest 3-operand gold rationale in SmolLM2's tokens (digits are single
#   tokens, spaces apart); the stop token "." ends a rationale as in the demonstrations;
# * reward temperature 1 throughout (the posterior given a right answer; see gfn_trl/tasks/diverse_reasoning.py);
# * evaluation: 8 rationales per problem at temperature 1 (the policy itself), 16 test problems.
CPU_DEFAULTS = dict(
    output_dir="runs/diverse_reasoning", max_steps=16, per_device_train_batch_size=2, num_generations=4,
    learning_rate=5e-4, warmup_steps=2, max_completion_length=20, min_completion_length=1, stop_token=".",
    reward_temperature_start=1.0, reward_temperature_end=1.0, logging_steps=4, save_strategy="no", report_to="none",
    num_train=64, num_eval=16, eval_samples=8, eval_temperature=1.0, seed=0, lm_reward_weight=1.0,
)


@dataclass
class DiverseReasoningArguments:
    """Settings of the diverse-reasoning task (the shared ones are in RecipeArguments)."""

    verifier_epsilon: float = field(default=0.01, metadata={
        "help": "epsilon > 0 of the verifier's log-reward log(epsilon + 1[right]): a wrong rationale gets R = "
                "epsilon, a right one 1 + epsilon (a GFlowNet needs R > 0 everywhere)."})
    problem_seed: int = field(default=0, metadata={
        "help": "Seed of the generated problems (test, demonstrations, training), apart from --seed so that every "
                "run seed is tested on the same problems."})


def check(recipe: runner.RecipeArguments, args, task: DiverseReasoningArguments | None = None) -> None:
    """Every argument, file and package the run needs, checked before any model loads (`gfn_trl.runner.check`)."""
    runner.check(TASK, recipe, args, task or DiverseReasoningArguments())


def main(recipe: runner.RecipeArguments, args, task: DiverseReasoningArguments | None = None) -> dict:
    return runner.run(TASK, recipe, args, task or DiverseReasoningArguments())


def make_parser(argv=None):
    return runner.make_recipe_parser(CPU_DEFAULTS, DiverseReasoningArguments, argv=argv, task=TASK,
                                     description=__doc__)


if __name__ == "__main__":
    recipe_args, train_args, task_args = make_parser().parse_args_and_config()
    main(recipe_args, train_args, task_args)
