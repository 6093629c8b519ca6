"""Integer arithmetic with a latent rationale, GFlowNet fine-tuning (Hu et al. 2024, §4.4).

    accelerate launch recipes/arithmetic.py                                       # offline default: SmolLM2-135M on CPU
    accelerate launch recipes/arithmetic.py --config recipes/configs/arithmetic_gpt-j.yaml   # the paper's setting

Trains q(Z | X) so that q(Z) ∝ p_LM(Z Y | k-shot demonstrations, X), where X is "Question: 6 - 0 - 4 - 8 = ? Answer:",
Z a rationale " 6 - 0 = 6, 6 - 4 = 2, 2 - 8 = -6" and Y ". The answer is -6.".  The policy sees X alone; the reward
LM (the policy's base, adapter off) sees 3 gold demonstrations, then X.  Latents use only digit/operator tokens.
The paper's calculator is on (`--calculator true`, the default): whenever the policy writes "=", the calculator
appends the result (" 6") to the state as forced tokens, which are not policy actions (gfn_trl/tools.py,
gfn_trl/tasks/arithmetic.py).  `--calculator false` makes the policy write the results itself.
max_completion_length counts every token of the state, the calculator's included, and must hold a complete
4-operand rationale (the recipe warns when it does not).

Problems are generated (seeded; 1-digit operands, + and -): training problems have 3-4 operands, the tests 3 and 4
(in distribution) and 5 (out of distribution), disjoint from training (asserted).  `--eval_split validation`
evaluates on 3- and 4-operand validation problems instead, disjoint from every other split: choose settings there.

The offline default first fine-tunes the LM on held-out problems' "X Z Y" and "X Z <stop>" texts (the rationale-LM
stage, `--rationale_lm_steps`; as the infill recipe's story LM, through the same code, gfn_trl/tasks/lm_stage.py):
that rationale LM is the reward, the policy's start, the prompting baselines and the evaluation likelihood, for
every trainer alike.  Its problems are disjoint from the training, test and validation problems (asserted).  The
untuned SmolLM2-135M reward prefers short partial rationales to the gold one, and a GFlowNet trained on it learns
those (0 % accuracy).  The paper's config has no such stage (GPT-J's reward needs none).  `--dataset` takes the paper's
data directory or a JSON/JSONL file instead.  The first 10 training problems (the paper's `num_train: 10`; the
offline default: all, `--num_gold -1`) have their gold rationales put in the replay buffer before training, as the
paper does; the others are given only with their answer.  `--trainer sft` fine-tunes on those `--num_gold` gold
rationales alone (the others have none to learn from).

Before and after training it samples `eval_samples` rationales (the paper: 10 at temperature 0.1) for each of the
`num_eval` problems of each test and reports the majority-vote accuracy of the answers read from the rationales,
and the base-LM log p(Z Y | reward prompt) of the samples, for:
    prompting  the untuned LM (adapter disabled), the same zero-shot prompt and sampler as the GFlowNet policy;
    3-shot     the untuned LM prompted with the 3 demonstrations of the reward prompt (k-shot CoT);
    gfn        the trained policy.
Each test gets a latent budget that holds its longest gold rationale (the paper: 18 tokens in training, 21 in
evaluation).  Writes, under --output_dir: the adapter and tokenizer (the GGUF default's de-quantized base in
`base_model/`), metrics.json, samples.jsonl (rationales next to the gold) and policy_check.json (see
gfn_trl.runner.save_run).
"""

import os
from dataclasses import dataclass, field

os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

from gfn_trl import runner  # noqa: E402  (lazy: `--help` imports the arguments only)

TASK = "arithmetic"  # gfn_trl.tasks.arithmetic.TASK, imported when the run starts

# The offline CPU default: ~19 min on 2 cores shared with other jobs (the rationale-LM stage ~8 of them, loaded from
# --rationale_lm_cache by the later runs of the same seed; the reward pass dominates the rest: 3-shot prompt + Z + one
# copy of Y per prefix, ~440 tokens a latent). The paper's values are in recipes/configs/arithmetic_gpt-j.yaml.
# * a rationale-LM stage (32 steps of 8 texts, lr 1e-4, on 64 held-out problems' "X Z Y" and "X Z <stop>"), as the
#   infill recipe's story LM: the untuned 135M reward prefers short partial rationales to the gold one, so that its
#   GFlowNet learned " 2 + 5" and scored 0 % (README, "Results of the offline defaults");
# * max_completion_length 31 (the paper: 18): it counts the calculator's tokens too, and SmolLM2 spends two tokens
#   on " 6" ("Ġ", "6"), so the longest 4-operand gold rationale is 31 tokens (of which up to 9 are the calculator's);
# * 40 steps at lr 1e-4 (the paper's), reward temperature 1.1 -> 0.5 as in the paper, over 40 steps instead of 150;
#   replay half of the batches, with the gold of every training problem seeded (16 problems, 4 latents a question);
# * evaluation at the paper's temperature 0.1 with 1 sample per question instead of 10 (at T = 0.1 they rarely
#   differ) and 20 questions per test instead of 500.
# Chosen on --eval_split validation (20 problems of 3 and of 4 operands, seed 0), never on the tests.
CPU_DEFAULTS = dict(
    output_dir="runs/arithmetic", max_steps=40, per_device_train_batch_size=1, num_generations=4, learning_rate=1e-4,
    warmup_steps=2, max_completion_length=31, min_completion_length=5, reward_temperature_start=1.1,
    reward_temperature_end=0.5, reward_temperature_horizon=40, on_policy_prob=0.25, tempered_prob=0.25,
    replay_prob=0.5, logging_steps=4, save_strategy="no", report_to="none", num_train=16, num_eval=20, eval_samples=1,
    eval_temperature=0.1, seed=0, num_gold=-1, rationale_lm_steps=32, rationale_lm_learning_rate=1e-4,
    num_rationale=64, rationale_lm_cache="runs/rationale_lm_cache",
)


@dataclass
class ArithmeticArguments:
    """Settings of the arithmetic task (the shared ones are in RecipeArguments)."""

    calculator: bool = field(default=True, metadata={
        "help": "The paper's calculator tool: after each '=' the result is appended to the state as forced tokens "
                "(not policy actions). false: the policy writes the results itself."})
    num_gold: int = field(default=10, metadata={
        "help": "How many training problems (the first ones) come with their gold rationale: put in the GFlowNet's "
                "replay buffer before training, and SFT's training set (--trainer sft); -1: every training problem. "
                "The paper: 10."})
    rationale_lm_steps: int = field(default=0, metadata={
        "help": "First fine-tune the LM for this many steps (8 texts a step; TRL SFTTrainer, full fine-tuning) on "
                "held-out problems' 'X Z Y' and 'X Z <stop>' texts (query, gold rationale, solution or the stop "
                "token), "
                "as infilling's story LM: the policy, the reward, the prompting baselines and the evaluation "
                "likelihood then all use that rationale LM, for every trainer. 0: the model as loaded (the paper)."})
    rationale_lm_learning_rate: float = field(default=1e-4, metadata={
        "help": "Learning rate of the rationale-LM stage."})
    num_rationale: int = field(default=64, metadata={
        "help": "Problems (3-4 operands) of the rationale-LM stage, drawn apart from the training, demonstration, test "
                "and validation problems (asserted)."})
    rationale_lm_cache: str | None = field(default=None, metadata={
        "help": "A folder where the rationale LM's weights are kept under a fingerprint of the starting weights, "
                "texts, settings and torch / transformers / TRL versions: a run with the same ones (another trainer "
                "of the same seed) loads them instead of training again; the result is the same. None: no cache."})
    eval_split: str = field(default="test", metadata={
        "help": "Evaluate on the 'test' splits (3, 4 operands and the 5-operand OOD split) or on 'validation' splits "
                "of 3 and 4 operands drawn from the training distribution, disjoint from every other split: choose "
                "settings there, never on the tests.", "choices": ["test", "validation"]})
    gold_weight: int = field(default=1, metadata={
        "help": "How many times as often the 10 training problems whose gold rationale seeds the replay buffer are "
                "drawn as the others (they are repeated in the training set); an integer >= 1. The paper weights "
                "them 1 against 0.2: 5 (recipes/configs/arithmetic_gpt-j.yaml)."})


def check(recipe: runner.RecipeArguments, args, task: ArithmeticArguments | None = None) -> None:
    """Every argument, file and package the run needs, checked before any model loads (`gfn_trl.runner.check`)."""
    runner.check(TASK, recipe, args, task or ArithmeticArguments())


def main(recipe: runner.RecipeArguments, args, task: ArithmeticArguments | None = None) -> dict:
    return runner.run(TASK, recipe, args, task or ArithmeticArguments())


def make_parser(argv=None):
    return runner.make_recipe_parser(CPU_DEFAULTS, ArithmeticArguments, argv=argv, task=TASK, description=__doc__)


if __name__ == "__main__":
    recipe_args, train_args, task_args = make_parser().parse_args_and_config()
    main(recipe_args, train_args, task_args)
