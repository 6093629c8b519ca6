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
(in distribution) and 5 (out of distribution), disjoint from training (asserted).  `--dataset` takes the paper's
data directory or a JSON/JSONL file instead.  The first 10 training problems (the paper's `num_train: 10`) have
their gold rationales put in the replay buffer before training, as the paper does.

Before and after training it samples `eval_samples` rationales (the paper: 10 at temperature 0.1) for each of the
`num_eval` problems of each test and reports the majority-vote accuracy of the answers read from the rationales,
and the base-LM log p(Z Y | reward prompt) of the samples, for:
    prompting  the untuned LM (adapter disabled), the same zero-shot prompt and sampler as the GFlowNet policy;
    3-shot     the untuned LM prompted with the 3 demonstrations of the reward prompt (k-shot CoT);
    gfn        the trained policy.
Each test gets a latent budget that holds its longest gold rationale (the paper: 18 tokens in training, 21 in
evaluation).  Writes, under --output_dir: the adapter and tokenizer (the GGUF default's de-quantized base in
`base_model/`), metrics.json, samples.jsonl (rationales next to the gold) and policy_check.json (see
gfn_trl.recipe.save_run).
"""

import os

os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

from dataclasses import dataclass, field  # noqa: E402

from gfn_trl import GFlowNetTrainer  # noqa: E402
from gfn_trl.data import tokenize_dataset  # noqa: E402
from gfn_trl.evaluation import sample_and_score  # noqa: E402
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
from gfn_trl.sampling import LatentConstraints  # noqa: E402
from gfn_trl.tasks import arithmetic  # noqa: E402

N_SHOTS = 3  # demonstrations in the reward prompt (the paper's `num_points: 3`)
N_GOLD = 10  # training problems whose gold rationale seeds the replay buffer (the paper's `num_train: 10`)
SPLITS = {"test3": "test_3", "test4": "test_4", "ood5": "test_5"}

# The offline CPU default: a few minutes on 2 idle cores (the reward pass dominates: 3-shot prompt + Z + one copy of
# Y per prefix, ~440 tokens a latent). The paper's values are in recipes/configs/arithmetic_gpt-j.yaml.
# * max_completion_length 31 (the paper: 18): it counts the calculator's tokens too, and SmolLM2 spends two tokens
#   on " 6" ("Ġ", "6"), so the longest 4-operand gold rationale is 31 tokens (of which up to 9 are the calculator's);
# * reward temperature 1.1 -> 0.5 as in the paper, over 12 steps instead of 150;
# * 4 latents per question instead of 16, 16 training problems (10 with a gold rationale in the buffer);
# * evaluation at the paper's temperature 0.1 but with 3 samples per question instead of 10 (at T = 0.1 they
#   rarely differ) and 6 questions per test instead of 500.
CPU_DEFAULTS = dict(
    output_dir="runs/arithmetic", max_steps=16, per_device_train_batch_size=1, num_generations=4, learning_rate=5e-4,
    warmup_steps=2, max_completion_length=31, min_completion_length=5, reward_temperature_start=1.1,
    reward_temperature_end=0.5, reward_temperature_horizon=12, logging_steps=4, save_strategy="no", report_to="none",
    num_train=16, num_eval=6, eval_samples=3, eval_temperature=0.1, seed=0,
)

# What `validate` checks before any model is loaded: JSON / JSON Lines problems or the paper's data directory, gold
# rationales (--trainer sft), no encoder
SPEC = TaskSpec("arithmetic", data_formats=(".json", ".jsonl"), data_dir=True, gold=True)


@dataclass
class ArithmeticArguments:
    calculator: bool = field(default=True, metadata={
        "help": "The paper's calculator tool: after each '=' the result is appended to the state as forced tokens "
                "(not policy actions). false: the policy writes the results itself."})


def check(recipe: RecipeArguments, args, task: ArithmeticArguments | None = None) -> None:
    """Every argument, file and package the run needs, checked before any model loads (`gfn_trl.recipe.validate`)."""
    validate(recipe, args, SPEC, tool=(task or ArithmeticArguments()).calculator)


def main(recipe: RecipeArguments, args, task: ArithmeticArguments | None = None) -> dict:
    task = task or ArithmeticArguments()
    check(recipe, args, task)
    splits = load_data(arithmetic.load_splits, recipe.dataset, seed=args.seed, n_train=recipe.num_train,
                       n_test_per_length=recipe.num_eval, n_shots=N_SHOTS)
    check_train_rows(recipe, args, len(splits["train"]))
    model, tokenizer = load_model_and_tokenizer(recipe, args)
    tool = arithmetic.calculator(tokenizer) if task.calculator else None
    shots, train = splits["shots"], splits["train"]
    tests = {name: splits[key] for name, key in SPLITS.items() if splits.get(key)}

    gold_latents = [arithmetic.gold_latent(tokenizer, p, tool) for p in train]
    too_long = sum(len(ids) > args.max_completion_length for ids in gold_latents)
    if too_long:
        print(f"Warning: {too_long} of {len(train)} training problems have a gold rationale longer than "
              f"max_completion_length={args.max_completion_length} tokens; the policy cannot write it in full.")

    built = build_trainer(recipe, args, model, tokenizer, arithmetic.to_contract(train, shots),
                          vocab_mask=arithmetic.vocab_mask, gold_column="gold", tool=tool)
    trainer, method, policy = built.trainer, recipe.trainer, built.policy
    if isinstance(trainer, GFlowNetTrainer):
        seeded = trainer.seed_replay_buffer(gold_latents[:N_GOLD])
        print(f"Replay buffer seeded with {seeded} gold rationales.")

    c = built.constraints
    eval_sets = {}
    for name, problems in tests.items():
        n_operands = max(p.n_operands for p in problems)
        budget = max(c.max_length, arithmetic.rationale_token_budget(tokenizer, n_operands, tool))
        rows = {prompting: list(tokenize_dataset(
            arithmetic.to_contract(problems, shots, prompt_shots=shots if prompting == "3-shot" else ()),
            tokenizer, model.config, budget, "eval")) for prompting in ("zero-shot", "3-shot")}
        eval_sets[name] = (LatentConstraints(c.stop_token_id, budget, c.min_length, c.allowed, c.tool), rows)

    def run_eval(prompting, disable_adapter):
        return {name: sample_and_score(policy, built.reward, tokenizer, constraints, rows[prompting],
                                       recipe.eval_samples, recipe.eval_temperature, seed=args.seed,
                                       disable_adapter=disable_adapter)
                for name, (constraints, rows) in eval_sets.items()}

    scored = {}
    if not recipe.skip_baseline:
        scored["prompting"] = run_eval("zero-shot", disable_adapter=True)  # the untuned LM, same prompt and sampler
        scored["3-shot"] = run_eval("3-shot", disable_adapter=True)  # the untuned LM with the demonstrations
    trainer.train()
    scored[method] = run_eval("zero-shot", disable_adapter=False)
    metrics = {method: {f"{name}/{k}": v for name, s in per_split.items() for k, v in arithmetic.evaluate(s).items()}
               for method, per_split in scored.items()}

    samples = [
        {"method": method, "split": name, "question": s.row["question"], "answer": s.row["answer"],
         "gold": s.row["gold"], "samples": s.texts, "predictions": [arithmetic.extract_answer(t) for t in s.texts],
         "log_likelihood": s.log_likelihood}
        for method, per_split in scored.items() for name, rows in per_split.items() for s in rows
    ]
    save_run(trainer, recipe, args, metrics, samples, built, next(iter(scored[method].values())))
    if trainer.accelerator.is_main_process:
        examples = [{"question": s.row["question"], "answer": s.row["answer"], "gold": s.row["gold"],
                     **{f"{m} sample": scored[m][name][i].texts[0] for m in scored}}
                    for name in tests for i, s in enumerate(scored[method][name][:1])]
        print_summary(f"integer arithmetic ({'with' if tool else 'no'} calculator tool)", metrics, examples)
    trainer.end()
    return metrics


def make_parser(argv=None):
    return make_recipe_parser(CPU_DEFAULTS, ArithmeticArguments, argv=argv)


if __name__ == "__main__":
    recipe_args, train_args, task_args = make_parser().parse_args_and_config()
    main(recipe_args, train_args, task_args)
