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

from gfn_trl import runner  # noqa: E402  (lazy: `--help` imports the arguments only)

TASK = "infill"  # gfn_trl.tasks.infill.TASK, imported when the run starts

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


@dataclass
class InfillArguments:
    """Settings of the infilling task (the shared ones are in RecipeArguments)."""

    seed_gold: bool = field(default=True, metadata={
        "help": "GFlowNet: put the gold sentence 4 of every training story in the replay buffer before training, as "
                "the paper does (those longer than max_completion_length are skipped)."})
    story_lm_steps: int = field(default=0, metadata={
        "help": "First fine-tune the LM on the whole training stories for this many steps (TRL SFTTrainer, full "
                "fine-tuning), as the paper does: the policy, the reward, the prompting baseline and the evaluation "
                "likelihood then all use that story LM. 0: use the model as loaded."})
    story_lm_learning_rate: float = field(default=1e-4, metadata={"help": "Learning rate of the story LM stage."})


def check(recipe: runner.RecipeArguments, args, task: InfillArguments | None = None) -> None:
    """Every argument, file and package the run needs, checked before any model loads (`gfn_trl.runner.check`)."""
    runner.check(TASK, recipe, args, task or InfillArguments())


def main(recipe: runner.RecipeArguments, args, task: InfillArguments | None = None) -> dict:
    return runner.run(TASK, recipe, args, task or InfillArguments())


def make_parser(argv=None):
    return runner.make_recipe_parser(CPU_DEFAULTS, InfillArguments, argv=argv, task=TASK, description=__doc__)


if __name__ == "__main__":
    main(*make_parser().parse_args_and_config())
