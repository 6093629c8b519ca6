"""Diverse correct reasoning: arithmetic rationales rewarded by a verifier of the answer, with the LM as a prior.

    X = 3 gold demonstrations, then "Question: 7 - 3 + 5 = ? Answer:"
    Z = " 7 - 3 = 4, 4 + 5 = 9"                    (written by the policy itself: no calculator), ended by "."

The target (issue 16; `gfn_trl.rewards.functions`) is the LM's rationale distribution tilted by a verifier:

    log R(Z) = [α · log p_LM(Z "." | X) + log(ε + 1[answer(Z) = answer(X)])] / T_R

* The policy and the prior see the same prompt X, the demonstrations included (k-shot chain of thought: the untuned
  135M model gets a share of these problems right only so), and a latent ends with the stop token "." (the
  `stop_token` of the recipe; what ends a rationale in the demonstrations, ". The answer is 7."), so the prior is
  the stop-token reward log p_LM(Z "." | X) of the frozen base LM (the policy with its adapter off): the untuned
  policy itself, up to the latent vocabulary (`arithmetic.vocab_mask`) and the forced stop at the maximum length.
* The verifier `CorrectAnswer` reads the answer as the arithmetic task does (`arithmetic.extract_answer`: the text
  after the last "=", else the last number) and returns log(1 + ε) for a right one, log ε for a wrong or missing
  one.  A GFlowNet samples q(Z) ∝ R(Z), so R must be > 0 on every latent it can sample: an indicator alone
  (log 0 = -inf) would make every wrong rationale's flow infinite in log space.  With ε > 0 the target is, at
  α = 1 and T_R = 1,

      q(Z) ∝ p_LM(Z "." | X) · (ε + 1[Z right])

  the untuned LM conditioned on a right answer, mixed with ε of the wrong rationales: the Bayesian posterior over
  rationales given that the answer is right.  Its accuracy per sample is P(right) / (P(right) + ε · P(wrong))
  (≥ 0.95 for ε = 0.01 once the prior gets 17 % right), and its diversity is that of the LM's own right rationales,
  which a reward maximiser (GRPO) is expected to lose by collapsing onto one per problem.  α = 1 and T_R = 1 are the
  recipe's defaults for that reason: α < 1 (or T_R > 1) flattens the prior towards uniform over the strings the
  verifier accepts, degenerate ones included; T_R < 1 sharpens it towards the single most likely right rationale,
  the collapse the comparison is about.
* Every prefix of a rationale is a finished rationale of its own (any state may stop), so the verifier scores
  prefixes (`scores_prefixes = True`) and the paper's modified SubTB runs unchanged (Hu et al. 2024, eq. 3).

Problems are 1-digit operands with + and -, 2 or 3 operands (`OPERANDS`): SmolLM2-135M gets about 0 % of the paper's
3-5-operand problems right without the calculator, but a non-zero share of these (measured: README, "Diverse correct
reasoning").  The calculator tool is off: TRL's GRPO cannot run a tool (`gfn_trl.runner.check_trainer_choice`), and
with it the verifier would mostly check the tool.  Splits are drawn from `problem_seed` (not the run's seed, so that
every seed is tested on the same problems): test problems first, then demonstrations and training problems,
disjoint from them (asserted).

Evaluation (`evaluate`): k = `eval_samples` rationales per held-out problem at `eval_temperature` (1: the policy as
it is), and per method
    accuracy           majority vote over the k answers (ties broken by first occurrence), as in the paper;
    pass@k             a right answer among the k;
    sample_accuracy    the share of right samples;
    distinct_correct   distinct right rationales per problem (distinct token sequences whose answer is right): a
                       policy collapsed onto one rationale per problem has at most 1;
    distinct           distinct rationales per problem;
    log_likelihood/*   the base LM's log p(Z "." | X), the same likelihood for every method.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from datasets import Dataset

from ..data import tokenize_dataset
from ..evaluation import Scored, likelihood_summary
from ..evaluation.text_metrics import majority_vote_accuracy
from ..progress import say
from ..sampling import LatentConstraints
from . import arithmetic
from .arithmetic import Problem, check_disjoint, extract_answer, few_shot_prompt, generate_problems, gold_rationale
from .base import Evaluated, RunContext, Summary, Task, TaskData, TaskSpec

OPERANDS = (2, 3)  # operands per problem, training and test alike
N_SHOTS = 3  # gold demonstrations in the prompt, as in the arithmetic task's reward prompt
STOP = "."  # the stop token: what ends a rationale in the demonstrations (". The answer is 7.")


class CorrectAnswer:
    """The verifier, a reward function in TRL's signature: log(ε + 1[the rationale's answer is the problem's]).

    Called as `f(prompts=..., completions=..., completion_ids=..., answer=[...], **columns)` (the dataset's `answer`
    column, one int per completion); the answer of a completion is `arithmetic.extract_answer` of its text (None, no
    number, is wrong).  Returns a list of floats: log(1 + ε) for a right answer, log ε for a wrong one (natural log,
    untempered; a log-reward term, so R = ε + 1[right] > 0 on every latent, as a GFlowNet needs).  `scores_prefixes`
    is True: a prefix of a rationale is scored as the finished rationale it is if the policy stops there.

    Args:
        epsilon: ε > 0, the reward of a wrong rationale relative to 1 + ε for a right one.
    Raises:
        ValueError: ε not a finite number > 0.
    """

    __name__ = "correct_answer"  # the metric name TRL and the trainers log (`rewards/correct_answer/mean`)
    scores_prefixes = True

    def __init__(self, epsilon: float = 0.01):
        if isinstance(epsilon, bool) or not isinstance(epsilon, (int, float)) or not (0 < epsilon < math.inf):
            raise ValueError(f"--verifier_epsilon must be a finite number > 0 (R = epsilon + 1[right] must be > 0 for "
                             f"a GFlowNet), got {epsilon!r}.")
        self.epsilon = float(epsilon)
        self.right, self.wrong = math.log1p(self.epsilon), math.log(self.epsilon)

    def __call__(self, prompts, completions, completion_ids, answer, **kwargs) -> list[float]:
        texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
        return [self.right if extract_answer(t) == int(a) else self.wrong for t, a in zip(texts, answer)]


def make_splits(problem_seed: int, n_train: int, n_test: int, n_shots: int = N_SHOTS) -> dict[str, list[Problem]]:
    """Seeded splits of distinct 1-digit problems with `OPERANDS` operands: 'test' (`n_test`, drawn first), then
    'shots' (`n_shots`) and 'train' (`n_train`), both disjoint from 'test' (asserted)."""
    rng = random.Random(f"diverse_reasoning:{problem_seed}")
    test = generate_problems(rng, n_test, OPERANDS)
    pool = generate_problems(rng, n_shots + n_train, OPERANDS, exclude=test)
    splits = {"test": test, "shots": pool[:n_shots], "train": pool[n_shots:]}
    check_disjoint(splits)
    return splits


def to_contract(problems: list[Problem], shots: list[Problem]) -> Dataset:
    """Problems -> the trainers' columns: `prompt` the demonstrations then the query (the policy's and the prior's;
    no suffix: the stop-token reward), `answer` (what the verifier reads), `gold` and `question`."""
    demos = few_shot_prompt(shots)
    return Dataset.from_dict({
        "prompt": [demos + p.query for p in problems],
        "answer": [p.answer for p in problems],
        "gold": [gold_rationale(p) for p in problems],
        "question": [p.expression for p in problems],
    })


def evaluate(scored: list[Scored]) -> dict[str, float]:
    """The metrics of the module docstring over the held-out problems' samples (each `Scored` row holds k)."""
    predictions = [[extract_answer(t) for t in s.texts] for s in scored]
    gold = [int(s.row["answer"]) for s in scored]
    right = [[x == g for x in p] for p, g in zip(predictions, gold)]
    n = sum(len(p) for p in predictions)
    metrics = {
        "accuracy": majority_vote_accuracy(predictions, gold),
        "pass@k": sum(any(r) for r in right) / len(scored),
        "sample_accuracy": sum(sum(r) for r in right) / max(n, 1),
        "distinct_correct": sum(len({tuple(z) for z, ok in zip(s.tokens, r) if ok}) for s, r in zip(scored, right))
        / len(scored),
        "distinct": sum(len({tuple(z) for z in s.tokens}) for s in scored) / len(scored),
    }
    metrics.update(likelihood_summary(scored))
    return metrics


@dataclass
class _Eval:
    constraints: LatentConstraints
    rows: list[dict]


class DiverseReasoningTask(Task):
    """The diverse-reasoning recipe's task: the verifier `CorrectAnswer` (ε = `--verifier_epsilon`) on top of the LM
    prior for every trainer, digit/operator latents (`arithmetic.vocab_mask`), no tool, no replay seeds (every
    trainer learns from its own samples only: the same sampling budget), the untuned policy as the baseline."""

    spec = TaskSpec(
        "diverse_reasoning", data_formats=(), gold=True,
        summary=(
            "diverse correct reasoning (beyond the paper: a verifier reward with the LM as prior): sample "
            "arithmetic rationales Z with probability ∝ p_LM(Z | demonstrations, X) · (ε + 1[Z's answer is "
            "right]), many distinct right rationales per problem rather than one."
        ),
    )
    baselines = ("prompting",)

    def check(self, ctx: RunContext) -> None:
        CorrectAnswer(ctx.task_args.verifier_epsilon)  # raises on a bad epsilon
        if ctx.recipe.dataset is not None:
            raise ValueError("--dataset: the diverse-reasoning recipe generates its problems (--problem_seed); it "
                             "reads no data file.")

    def load(self, ctx: RunContext) -> TaskData:
        n_train = ctx.recipe.num_train if ctx.recipe.num_train is not None else 64
        splits = make_splits(ctx.task_args.problem_seed, n_train, ctx.recipe.num_eval)
        return TaskData(splits["train"], splits["test"], extra={"shots": splits["shots"]})

    def to_contract(self, ctx: RunContext, data: TaskData) -> Dataset:
        budget = ctx.args.max_completion_length
        need = arithmetic.rationale_token_budget(ctx.tokenizer, max(OPERANDS))
        if need > budget:
            say(f"Warning: the longest {max(OPERANDS)}-operand gold rationale takes {need} tokens, more than "
                f"max_completion_length={budget}: some rationales cannot be written in full.")
        return to_contract(data.train, data.extra["shots"])

    def vocab_mask(self, ctx: RunContext):
        return arithmetic.vocab_mask

    def reward_funcs(self, ctx: RunContext) -> list:
        return [CorrectAnswer(ctx.task_args.verifier_epsilon)]

    def prepare_evaluation(self, ctx: RunContext, data: TaskData) -> None:
        c = ctx.built.constraints
        rows = list(tokenize_dataset(to_contract(data.eval, data.extra["shots"]), ctx.tokenizer, ctx.model.config,
                                     c.max_length, "eval"))
        ctx.eval = _Eval(c, rows)

    def evaluate(self, ctx: RunContext, method: str) -> Evaluated:
        scored = ctx.sample(ctx.eval.rows, disable_adapter=method in self.baselines, constraints=ctx.eval.constraints)
        return Evaluated(scored, {f"test/{k}": v for k, v in evaluate(scored).items()})

    def samples(self, ctx: RunContext, results: dict[str, Evaluated]) -> list[dict]:
        return [{"method": method, "question": s.row["question"], "answer": s.row["answer"], "gold": s.row["gold"],
                 "samples": s.texts, "predictions": [extract_answer(t) for t in s.texts],
                 "log_likelihood": s.log_likelihood}
                for method, r in results.items() for s in r.scored]

    def summary(self, ctx: RunContext, data: TaskData, results: dict[str, Evaluated], seeded: int) -> Summary:
        trained = results[ctx.recipe.trainer].scored
        examples = [{"question": s.row["question"], "answer": s.row["answer"], "gold": s.row["gold"],
                     **{f"{m} samples": " | ".join(results[m].scored[i].texts) for m in results}}
                    for i, s in enumerate(trained[:2])]
        return Summary("diverse correct reasoning (arithmetic, verifier reward and LM prior, no calculator)", examples)


TASK = DiverseReasoningTask()
