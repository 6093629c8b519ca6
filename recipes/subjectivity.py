"""Subjectivity classification with a latent rationale and GFlowNet fine-tuning (Hu et al. 2024, §4.3).

    accelerate launch recipes/subjectivity.py        # offline default: SmolLM2-135M on CPU, embedded SUBJ-style data
    accelerate launch recipes/subjectivity.py --config recipes/configs/subjectivity_gpt-j.yaml   # the paper's setting

Trains q(Z | X) so that q(Z) ∝ p_LM(Z Y | X), where X is a movie-review sentence in the paper's query, Z a rationale
of 1-5 tokens and Y ", so it is {label}.", on a low-data subset of `num_labelled` labelled reviews (10, 20 or 50 in
the paper).  A rationale after which the frozen LM prefers the wrong label's Y gets the paper's -50 penalty.

Every method is scored by the same frozen LM the same way: for each of `eval_samples` rationales per held-out review
(the paper: 10, temperature 1) the predicted label is the one whose Y the base LM finds more likely after X Z; the
review's prediction is the majority vote.  Methods:
    zero_shot   an empty rationale (Z = nothing)
    untuned     rationales sampled from the untuned LM (the adapter disabled), same prompt, same sampler
    gfn         rationales sampled from the GFlowNet-fine-tuned policy
Writes, under --output_dir: the adapter and tokenizer (the GGUF default's de-quantized base in `base_model/`),
metrics.json, samples.jsonl (rationales with their predicted labels) and policy_check.json; see
gfn_trl.recipe.save_run.
"""

import os

os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

from dataclasses import dataclass, field  # noqa: E402

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
    single_line_mask,
    validate,
)
from gfn_trl.tasks import subjectivity  # noqa: E402


@dataclass
class SubjectivityArguments:
    """Settings of the subjectivity task (the shared ones are in RecipeArguments)."""

    num_labelled: int = field(
        default=10, metadata={"help": "Labelled training reviews: the paper's low-data subsets have 10, 20 or 50."}
    )
    subset_seed: int = field(default=0, metadata={"help": "Seed of the shuffle that draws the subset (the paper: 0)."})
    balanced: bool = field(
        default=True, metadata={"help": "Draw the subset with as many reviews of each label as possible."}
    )
    test_dataset: str | None = field(
        default=None,
        metadata={"help": "Separate test set (.jsonl file or hub dataset id, its 'test' split), e.g. the paper's "
                  "2,000-review SUBJ test set. Default: hold out the first num_eval rows of --dataset."},
    )
    wishful_rationales: int = field(
        default=20,
        metadata={"help": "Seed the replay buffer with this many 'wishful' rationales per training review, sampled "
                  "from the base LM after '... {true label} because it is' (the paper: 20; 0 disables)."},
    )


# The offline CPU default: a few minutes on 2 cores. The paper's values are in recipes/configs/subjectivity_gpt-j.yaml.
CPU_DEFAULTS = dict(
    output_dir="runs/subjectivity", max_steps=16, per_device_train_batch_size=1, num_generations=8,
    gradient_accumulation_steps=1, learning_rate=5e-4, adam_beta2=0.99, lr_scheduler_type="linear", warmup_steps=2,
    max_completion_length=5, min_completion_length=1, reward_temperature_start=1.2, reward_temperature_end=1.0,
    reward_temperature_horizon=3, on_policy_prob=0.25, tempered_prob=0.25, replay_prob=0.5, replay_buffer_size=100,
    replay_sim_tolerance=0.1, logging_steps=4, save_strategy="no", report_to="none", seed=0,
    num_eval=16, eval_samples=10, lora_target_modules=["k_proj", "v_proj"], num_labelled=10, wishful_rationales=8,
)

# What `validate` checks before any model is loaded: SUBJ JSON Lines files, labels but no gold rationales (no
# --trainer sft), no encoder
SPEC = TaskSpec("subjectivity", data_formats=(".jsonl", ".json"), gold=False)


def check(recipe: RecipeArguments, args, task: SubjectivityArguments | None = None) -> None:
    """Every argument, file and package the run needs, checked before any model loads (`gfn_trl.recipe.validate`)."""
    task = task or SubjectivityArguments()
    if recipe.num_train is not None:
        raise ValueError("The subjectivity recipe draws its training set with --num_labelled (10, 20 or 50), "
                         "not --num_train.")
    if task.num_labelled < 1 or task.wishful_rationales < 0:
        raise ValueError("--num_labelled must be at least 1 and --wishful_rationales at least 0.")
    validate(recipe, args, SPEC, data={"--dataset": recipe.dataset, "--test_dataset": task.test_dataset})


def main(recipe: RecipeArguments, args, task: SubjectivityArguments | None = None) -> dict:
    task = task or SubjectivityArguments()
    check(recipe, args, task)
    data = load_data(subjectivity.load_subj, recipe.dataset)
    if task.test_dataset is not None:
        test = load_data(subjectivity.load_subj, task.test_dataset, "--test_dataset", split="test")
        held_out = set(test["text"])
        pool = data.filter(lambda r: r["text"] not in held_out)
    else:
        pool, test = subjectivity.split(data, recipe.num_eval)
    test = test.select(range(min(recipe.num_eval, len(test))))
    train = subjectivity.low_data_subset(pool, task.num_labelled, task.subset_seed, balanced=task.balanced)
    assert set(train["text"]).isdisjoint(test["text"]), "training and test reviews overlap"
    check_train_rows(recipe, args, len(train))
    model, tokenizer = load_model_and_tokenizer(recipe, args)

    built = build_trainer(recipe, args, model, tokenizer, subjectivity.to_contract(train),
                          vocab_mask=single_line_mask(tokenizer) if recipe.ban_newlines else None, gold_column=None)
    trainer, method, policy, reward = built.trainer, recipe.trainer, built.policy, built.reward
    # Evaluation rows carry no contrast suffix: sample_and_score then scores each rationale once, log p(Z Y_true | X)
    # without the training penalty, and `evaluate` compares the two labels itself.
    eval_rows = list(tokenize_dataset(subjectivity.to_contract(test).remove_columns("contrast_suffix"), tokenizer,
                                      model.config, built.constraints.max_length, "eval"))

    def run_eval(disable_adapter):
        return sample_and_score(policy, reward, tokenizer, built.constraints, eval_rows, recipe.eval_samples,
                                recipe.eval_temperature, seed=args.seed, disable_adapter=disable_adapter)

    metrics, scored, details = {}, {}, {}

    def judge(method):
        metrics[method], details[method] = subjectivity.evaluate(scored[method], reward, tokenizer,
                                                                 return_details=True)

    if not recipe.skip_baseline:
        scored["zero_shot"] = subjectivity.zero_shot(reward, tokenizer, eval_rows)  # Z = nothing
        judge("zero_shot")
        scored["untuned"] = run_eval(disable_adapter=True)  # the untuned LM's rationales, same prompt, same sampler
        judge("untuned")
    seeded = 0
    if hasattr(trainer, "replay_buffer"):  # GFlowNet only: off-policy seeds of the search
        seeded = subjectivity.seed_replay_buffer(trainer, task.wishful_rationales, seed=args.seed)
    trainer.train()
    scored[method] = run_eval(disable_adapter=False)
    judge(method)

    samples = [
        {"method": method, "text": s.row["text"], "label": s.row["label"], "rationales": s.texts,
         "predictions": d["predictions"], "log_likelihood": d["log_likelihood"]}
        for method in scored for s, d in zip(scored[method], details[method])
    ]
    save_run(trainer, recipe, args, metrics, samples, built, scored[method])
    if trainer.accelerator.is_main_process:
        print(f"\n{len(train)} labelled reviews ({sum(lab == 'objective' for lab in train['label'])} objective), "
              f"{len(test)} test reviews, {seeded} wishful rationales in the replay buffer before training")
        examples = [
            {"review": s.row["text"], "label": s.row["label"],
             **{f"{m}": f"{scored[m][i].texts[0]!r} -> {details[m][i]['predictions'][0]}" for m in scored}}
            for i, s in enumerate(scored[method][:3])
        ]
        print_summary("subjectivity classification", metrics, examples)
    trainer.end()
    return metrics


def make_parser(argv=None):
    return make_recipe_parser(CPU_DEFAULTS, SubjectivityArguments, argv=argv)


if __name__ == "__main__":
    recipe_args, train_args, task_args = make_parser().parse_args_and_config()
    main(recipe_args, train_args, task_args)
