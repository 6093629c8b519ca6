"""Subjectivity classification with a latent rationale (paper §4.3, the authors' `Subj_obj_GFN_FT_E_step.ipynb`).

X is a movie-review sentence, Z a short rationale (1 to 5 tokens in the paper), Y the label sentence:

    prompt = reward_prompt   'Classify this movie review as objective or subjective: "{text}" This review is'
    suffix                   ", so it is {label}."
    contrast_suffix          ", so it is {other label}."

The reward is log p_LM(Z Y | X), with the paper's wrong-label penalty: a prefix after which the frozen LM prefers
the other label's Y gets `contrast_penalty` (-50).  The trainer does that from the `contrast_suffix` column.

Data.  Rows are {"text", "label"}.  A label is the string "objective" / "subjective" (any case), or an integer:
**0 = objective, 1 = subjective**, the class order of `SetFit/subj` (the 8,000 / 2,000 SUBJ copy whose sizes match the
paper's `data/subj/train.jsonl` / `test.jsonl`, rows `{"text", "label", "label_text"}`).  Beware: SentEval's own SUBJ
loader numbers the classes the other way round.  When a row also has a string `label_text` (as the authors' files
and SetFit/subj do), `label_text` is used, and an integer `label` that contradicts it under 0 = objective is an
error, so an inverted copy cannot pass silently.  The embedded `tasks/data/subj.jsonl` holds 240 rows written for
this project (120 per label, all shorter than 25 words, shuffled).

Low-data training sets (the paper's 10 / 20 / 50 labelled examples, Hu et al. 2024 §4.3): the authors'
`train.{10,20,50}.jsonl` were taken from the training list filtered to texts of fewer than 25 words and shuffled with
seed 0 (their `data/subj` folder and E-step notebook; whether they were balanced by label is not recorded).
`low_data_subset` does the same filtering and seeded shuffle, then takes the first k//2 rows of each label in shuffled
order (balanced; the odd one and any shortfall of one label go to the next rows of the shuffled order), or, with
`balanced=False`, simply the first k rows.  Subsets of one seed are nested (k=10 is inside k=20 for the same seed).

Evaluation (the paper's M-step notebook): sample 10 rationales per test review at temperature 1; for each, the
predicted label is the one whose Y the *base* LM scores higher after X Z; the review's prediction is the majority
vote.  We compare the full suffixes ", so it is objective." / ", so it is subjective." (the comparison the training
reward makes); the authors' test code compared log p(" objective") and log p(" subjective") after ", so it is", i.e.
without the final period.  Ties between the two scores go to "subjective", as in the authors' `obj > sub` test.
The zero-shot baseline is the same procedure with an empty rationale (Z = nothing, so the LM reads
"... This review is, so it is {label}.").  The paper's zero-shot row used a different template ('... " It is'
followed by the label); ours keeps X and Y identical for every method, so the only difference is Z.  The few-shot
baseline (the authors' Subj_obj_fewshot notebook: all k labelled examples as demonstrations) puts the k labelled
reviews before X, each as X_i Y_i on its own line, and compares the two Y after X with an empty rationale
(`few_shot_log_likelihoods`; demonstrations that do not fit the context window are left out from the end).  The SFT
baseline (`--trainer sft`, the authors' Subj_obj_finetuning notebook) fine-tunes LoRA on X -> Y with TRL's
SFTTrainer (completion-only cross-entropy on Y and the stop token; the authors restricted the cross-entropy to the
two label tokens), and the fine-tuned model itself compares the two Y after X with an empty rationale.

Calibrated judge (`--calibrate`, the CPU default; the paper config keeps the authors' judge).  A small LM's judge is
biased: SmolLM2-135M finds ", so it is subjective." more likely after nearly every review and rationale, even after
Z = " objective".  Then every rationale of an objective review gets the -50 penalty (no signal to learn from) and
every method calls every review subjective.  The calibrated judge calls X Z objective when log p(Y_objective | X Z)
- log p(Y_subjective | X Z) exceeds b, the mean of that margin over the labelled reviews with an empty rationale
(`calibration_threshold`), instead of 0: in the training reward's penalty (each row's `contrast_margin`, read by
`LikelihoodReward`) and in the evaluation of every method the base LM judges (zero-shot, untuned, GFlowNet).  The
few-shot baseline keeps threshold 0 (as the authors'), and SFT its own judge.  With `--calibration_rationales N` the
threshold for sampled rationales (the training penalty's, the untuned and trained policies' judgements) is measured
on N untuned rationales per labelled review instead (`rationale_calibration_threshold`); zero-shot keeps the empty
rationale's.  On the validation reviews it did not help the M-step (docs/results/subjectivity/results.md, `v5`).

M-step (`--m_step_steps N`, the paper's "GFlowNet fine-tuning + supervised fine-tuning" row; the authors'
Subj_obj_GFN_FT_M_step notebook).  After the E-step (the GFlowNet, or any sampling trainer), `m_step_rationales`
rationales per labelled review are sampled from the trained policy, and a new LoRA adapter (`m_step`, the policy's
LoRA settings, on the same base weights) is trained with TRL's SFTTrainer on X Z -> Y_true: cross-entropy on the label
sentence Y only (`m_step_dataset`; the authors restricted it to the two label tokens).  The method `<trainer>_m_step`
then judges the E-step's own test rationales (the same ones as the `<trainer>` row) with the M-step model: per
rationale the label whose Y it finds more likely after X Z (threshold 0, as SFT's own judge), majority vote.  Its
log-likelihood metrics are the base LM's, as the E-step row's.  The adapter is saved with the run
(`OUTPUT_DIR/m_step/`).
"""

from __future__ import annotations

import copy
import inspect
import json
import os
import random
from collections.abc import Sequence

import torch
from datasets import Dataset, load_dataset

from ..data import tokenize_dataset
from ..evaluation import Scored, sample_and_score, score_texts
from ..evaluation.text_metrics import majority_vote_accuracy
from ..models import config_kept, eval_mode
from ..progress import say
from ..rewards import LikelihoodReward
from ..sampling import CACHE_KWARGS, LatentConstraints, cache_kwarg, counter_seed, left_pad, sample_latents
from ..tokenization import encode_continuation, encode_prompt
from . import DATA_DIR, base
from .base import Evaluated, RunContext, Summary, Task, TaskData, TaskSpec
from .files import load_data

EMBEDDED = DATA_DIR / "subj.jsonl"
LABELS = ("objective", "subjective")
INT_LABELS = {0: "objective", 1: "subjective"}
QUERY = 'Classify this movie review as objective or subjective: "{text}" This review is'
SUFFIX = ", so it is {label}."
PAPER_MAX_WORDS = 25  # the low-data subsets keep texts of fewer than 25 words


def other_label(label: str) -> str:
    return LABELS[1 - LABELS.index(label)]


def _label_of(value, i: int, source: str, column: str) -> str:
    if isinstance(value, str):
        label = value.strip().lower()
        if label in LABELS:
            return label
    elif isinstance(value, int) and not isinstance(value, bool) and value in INT_LABELS:
        return INT_LABELS[value]
    raise ValueError(
        f"Row {i} of {source} has an unknown {column} {value!r}: expected 'objective' or 'subjective', or an integer "
        "0 (objective) / 1 (subjective)."
    )


def _normalise_row(row, i: int, source: str) -> dict:
    if not isinstance(row, dict):
        raise ValueError(f"Row {i} of {source} is not a JSON object with 'text' and 'label': {row!r}.")
    text = row.get("text")
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"Row {i} of {source} has an empty or missing 'text': every row needs the review text.")
    has_label_text = isinstance(row.get("label_text"), str)
    if row.get("label") is None and not has_label_text:
        raise ValueError(
            f"Row {i} of {source} has no 'label': every row needs 'objective'/'subjective' or 0/1 (0 = objective)."
        )
    if has_label_text:
        label = _label_of(row["label_text"], i, source, "label_text")
        if isinstance(row.get("label"), int) and _label_of(row["label"], i, source, "label") != label:
            raise ValueError(
                f"Row {i} of {source} has label {row['label']!r} but label_text {row['label_text']!r}: this loader "
                "reads integer labels as 0 = objective, 1 = subjective (SetFit/subj); this file numbers them the "
                "other way. Drop the integer column or give string labels."
            )
    else:
        label = _label_of(row["label"], i, source, "label")
    return {"text": text.strip(), "label": label}


def load_subj(source: str | None = None, split: str = "train") -> Dataset:
    """SUBJ rows as a Dataset with columns `text` and `label` ("objective" / "subjective").

    `source`: None for the embedded `tasks/data/subj.jsonl`; a local `.jsonl` file (one JSON object per line with
    `text` and `label`, optionally `label_text`); or a hub dataset id (its `split`).  Raises a ValueError naming the
    row for a line that is not JSON, a missing or unknown label, or an empty text.
    """
    if source is None:
        source = str(EMBEDDED)
    if source.endswith((".jsonl", ".json")):
        if not os.path.exists(source):
            raise FileNotFoundError(f"SUBJ file {source} does not exist.")
        raw = []
        with open(source, encoding="utf-8") as f:
            for line_no, line in enumerate(f):
                if not line.strip():
                    continue
                try:
                    raw.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise ValueError(f"Row {len(raw)} (line {line_no + 1}) of {source} is not valid JSON: {e}.") from e
    else:
        raw = load_dataset(source, split=split)
    rows = [_normalise_row(r, i, source) for i, r in enumerate(raw)]
    if not rows:
        raise ValueError(f"{source} holds no rows.")
    return Dataset.from_dict({"text": [r["text"] for r in rows], "label": [r["label"] for r in rows]})


def split(ds: Dataset, num_eval: int) -> tuple[Dataset, Dataset]:
    """(train, test): the first `num_eval` rows are held out (the embedded rows are already shuffled); training rows
    whose text also occurs in the test rows are dropped, so the two never overlap.  With a separate test file (the
    paper's 8,000 / 2,000 split), load it with `load_subj(path, split="test")` instead."""
    if num_eval < 1 or len(ds) <= num_eval:
        raise ValueError(f"{len(ds)} rows cannot give {num_eval} test rows and a training set.")
    test = ds.select(range(num_eval))
    held_out = set(test["text"])
    train = ds.select([i for i in range(num_eval, len(ds)) if ds[i]["text"] not in held_out])
    assert held_out.isdisjoint(train["text"]), "train and test overlap"
    if len(train) == 0:
        raise ValueError("Every training row duplicates a test row.")
    return train, test


def low_data_subset(
    ds: Dataset, k: int, seed: int = 0, max_words: int = PAPER_MAX_WORDS, balanced: bool = True
) -> Dataset:
    """The paper's low-data training set of `k` examples (10, 20 or 50): texts of fewer than `max_words` words,
    shuffled with `seed`, then the first k//2 of each label in shuffled order (`balanced`) or the first k."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}.")
    pool = [i for i, t in enumerate(ds["text"]) if len(t.split()) < max_words]
    if len(pool) < k:
        raise ValueError(f"Only {len(pool)} rows have fewer than {max_words} words; cannot draw {k} examples.")
    random.Random(seed).shuffle(pool)
    if not balanced:
        return ds.select(pool[:k])
    labels = ds["label"]
    chosen, counts = set(), dict.fromkeys(LABELS, 0)
    for i in pool:  # k//2 of each label, in shuffled order
        if counts[labels[i]] < k // 2:
            chosen.add(i)
            counts[labels[i]] += 1
    for i in pool:  # the odd one out, and any shortfall of one label, from the next rows in shuffled order
        if len(chosen) == k:
            break
        chosen.add(i)
    return ds.select([i for i in pool if i in chosen])


def to_contract(ds: Dataset) -> Dataset:
    """SUBJ rows -> the trainer's columns (prompt, reward_prompt, suffix, contrast_suffix) plus `label` and `text`."""

    def row(r):
        query = QUERY.format(text=r["text"])
        return {
            "prompt": query,
            "reward_prompt": query,
            "suffix": SUFFIX.format(label=r["label"]),
            "contrast_suffix": SUFFIX.format(label=other_label(r["label"])),
        }

    return ds.map(row)


# ---------------------------------------------------------------------------------------------------------------------
# Prediction and evaluation: every method's rationales are judged by the same frozen LM, the same way.


def _label_suffix_ids(row: dict, tokenizer=None) -> dict[str, list[int]]:
    if tokenizer is not None:
        return {lab: encode_continuation(tokenizer, SUFFIX.format(label=lab)) for lab in LABELS}
    if not row.get("suffix_ids") or not row.get("contrast_suffix_ids"):
        raise ValueError("The row has no suffix_ids / contrast_suffix_ids: tokenize it first, or pass the tokenizer.")
    return {row["label"]: row["suffix_ids"], other_label(row["label"]): row["contrast_suffix_ids"]}


@torch.no_grad()
def label_log_likelihoods(
    reward, rows: Sequence[dict], latents: Sequence[Sequence[Sequence[int]]], tokenizer=None, batch_size: int = 64
) -> list[dict[str, list[float]]]:
    """For each tokenized row and each of its latents (token ids, possibly empty): log p(Z Y_label | X) under the
    frozen reward LM for both labels, with no wrong-label penalty.  Returns one {label: [per latent]} per row."""
    if len(rows) != len(latents):
        raise ValueError(f"{len(rows)} rows but {len(latents)} lists of latents.")
    # Each distinct (row, label, latent) is scored once.  Z is folded into the suffix (suffix = Z Y, empty latent):
    # LikelihoodReward's state 0 is then log p(Z Y | X) itself, in one pass over X Z Y instead of a packed pass over
    # X Z and len(Z) + 1 copies of Y (the same number, computed more cheaply).
    jobs: dict[tuple, dict] = {}
    for i, (row, zs) in enumerate(zip(rows, latents)):
        ids = _label_suffix_ids(row, tokenizer)
        for lab in LABELS:
            for z in zs:
                key = (i, lab, tuple(int(t) for t in z))
                if key not in jobs:
                    jobs[key] = {"reward_prompt_ids": row["reward_prompt_ids"], "suffix_ids": list(key[2]) + ids[lab],
                                 "contrast_suffix_ids": [], "gfn_has_suffix": True}
    keys = list(jobs)
    scores: dict[tuple, float] = {}
    for lo in range(0, len(keys), batch_size):
        chunk = keys[lo : lo + batch_size]
        z = torch.empty((len(chunk), 0), dtype=torch.long, device=reward.device)
        lengths = torch.zeros(len(chunk), dtype=torch.long, device=reward.device)
        log_r = reward([jobs[k] for k in chunk], z, lengths)
        scores.update(zip(chunk, log_r[:, 0].tolist()))
    return [
        {lab: [scores[(i, lab, tuple(int(t) for t in z))] for z in zs] for lab in LABELS}
        for i, zs in enumerate(latents)
    ]


def _predictions(lls: list[dict[str, list[float]]], threshold: float = 0.0) -> list[list[str]]:
    # the authors' test: objective iff its score is strictly higher (threshold 0); calibrated: higher by `threshold`
    return [["objective" if o - s > threshold else "subjective" for o, s in zip(ll["objective"], ll["subjective"])]
            for ll in lls]


def judged_rows(reviews: Dataset, tokenizer, config, max_length: int, split: str) -> list[dict]:
    """Tokenized rows of `reviews` (SUBJ rows: `text`, `label`) as the judge scores them: the contract without its
    contrast suffix, so that a latent is scored once, log p(Z Y_true | X), and the two labels are compared by
    `label_log_likelihoods`.  `max_length`: the latent budget (`tokenize_dataset`)."""
    return list(tokenize_dataset(to_contract(reviews).remove_columns("contrast_suffix"), tokenizer, config,
                                 max_length, split))


def _base_judge(model, tokenizer, batch_size: int) -> LikelihoodReward:
    """`model` itself (no adapter to disable) scoring as the frozen judge; pads with EOS if the tokenizer has no pad."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    return LikelihoodReward(None, model, tokenizer.eos_token_id, pad, batch_size)


@torch.no_grad()
def calibration_threshold(model, tokenizer, train: Dataset, batch_size: int = 16) -> float:
    """The calibrated judge's threshold b: the mean over the labelled training reviews of the base LM's zero-shot
    margin log p(Y_objective | X) - log p(Y_subjective | X) (empty rationale; the labels are not used).  The judge
    then calls a review objective iff its margin after X Z exceeds b, instead of 0: a small LM's label bias (SmolLM2
    prefers ", so it is subjective." after nearly every review and rationale, even after Z = " objective") moves
    the threshold, not the ranking of rationales."""
    scorer = _base_judge(model, tokenizer, batch_size)
    rows = judged_rows(train, tokenizer, model.config, 1, "train")
    lls = label_log_likelihoods(scorer, rows, [[[]] for _ in rows], tokenizer)
    return sum(ll["objective"][0] - ll["subjective"][0] for ll in lls) / len(lls)


@torch.no_grad()
def rationale_calibration_threshold(model, tokenizer, train: Dataset, constraints: LatentConstraints, n_per_review: int,
                                    seed: int = 0, temperature: float = 1.0, batch_size: int = 16,
                                    prompts_per_batch: int = 4) -> float:
    """The calibrated judge's threshold for sampled rationales (`--calibration_rationales N`): the mean over the
    labelled training reviews and `n_per_review` rationales each, sampled from `model` (the untuned policy: the base
    LM, no adapter) at `temperature` in the latent space `constraints`, of the base LM's margin log p(Y_objective | X
    Z) - log p(Y_subjective | X Z) (log-space, nats; the labels are not used).

    Why: a non-empty rationale moves the margin on its own.  With SmolLM2-135M and the empty rationale's threshold
    (`calibration_threshold`) 273 of 320 sampled test rationales were judged objective, so the training penalty hit
    nearly every rationale of a subjective review alike (no signal) and the GFlowNet predicted one label.  This
    threshold is the same calibration (the mean margin, both labels balanced) measured on the kind of input the judge
    then sees: rationales.  Deterministic given `seed` (`sample_and_score`'s counter-based seeds).
    `prompts_per_batch`: reviews sampled at once (`prompts_per_batch` × `n_per_review` sequences per pass)."""
    if n_per_review < 1:
        raise ValueError(f"n_per_review {n_per_review}: sample at least 1 rationale per review.")
    scorer = _base_judge(model, tokenizer, batch_size)
    rows = judged_rows(train, tokenizer, model.config, constraints.max_length, "train")
    scored = sample_and_score(model, None, tokenizer, constraints, rows, n_per_review, temperature,  # scored below
                              seed=counter_seed("calibration", seed), prompts_per_batch=prompts_per_batch)
    lls = label_log_likelihoods(scorer, rows, [s.tokens for s in scored], tokenizer)
    margins = [o - s for ll in lls for o, s in zip(ll["objective"], ll["subjective"])]
    return sum(margins) / len(margins)


def predict(reward, rows: Sequence[dict], scored: Sequence[Scored], tokenizer=None,
            threshold: float = 0.0) -> list[list[str]]:
    """For each tokenized row and each of its sampled rationales (`scored[i].tokens`), the label whose Y the base LM
    scores higher after X Z.  Without `tokenizer`, the labels' Y are read from the row's suffix_ids and
    contrast_suffix_ids."""
    if len(rows) != len(scored):
        raise ValueError(f"{len(rows)} rows but {len(scored)} scored rows.")
    return _predictions(label_log_likelihoods(reward, rows, [s.tokens for s in scored], tokenizer), threshold)


def evaluate(scored: Sequence[Scored], reward, tokenizer=None, return_details: bool = False, threshold: float = 0.0):
    """Majority-vote accuracy over each review's sampled rationales (the paper: 10), the fraction of single rationales
    that lead to the right label, and the base-LM log p(Z Y_true | X) of the rationales (mean over reviews of the mean
    and of the max over samples; no wrong-label penalty).

    With `return_details`, also returns one {"predictions": [label per rationale], "log_likelihood": [log p(Z Y_true
    | X) per rationale]} per review.  `threshold`: the calibrated judge's (`calibration_threshold`); 0: the authors'.
    """
    rows = [s.row for s in scored]
    lls = label_log_likelihoods(reward, rows, [s.tokens for s in scored], tokenizer)
    return label_metrics(lls, [r["label"] for r in rows], return_details, threshold)


def label_metrics(lls: list[dict[str, list[float]]], gold: Sequence[str], return_details: bool = False,
                  threshold: float = 0.0):
    """`evaluate`'s metrics from each review's label scores (`label_log_likelihoods`)."""
    preds = _predictions(lls, threshold)
    true_ll = [ll[g] for ll, g in zip(lls, gold)]
    n_samples = sum(len(p) for p in preds)
    metrics = {
        "accuracy": majority_vote_accuracy(preds, gold),
        "accuracy/per_sample": sum(p == g for ps, g in zip(preds, gold) for p in ps) / n_samples,
        "log_likelihood/mean": sum(sum(t) / len(t) for t in true_ll) / len(true_ll),
        "log_likelihood/max": sum(max(t) for t in true_ll) / len(true_ll),
    }
    if return_details:
        return metrics, [{"predictions": p, "log_likelihood": t} for p, t in zip(preds, true_ll)]
    return metrics


def zero_shot(reward, tokenizer, rows: Sequence[dict]) -> list[Scored]:
    """The zero-shot baseline: one empty rationale per row (Z = nothing), scored like any latent."""
    return score_texts(reward, tokenizer, list(rows), [[""] for _ in rows])


def few_shot_demonstrations(train_rows: Sequence[dict], tokenizer, max_tokens: int | None = None) -> tuple[str, int]:
    """The few-shot baseline's demonstrations: the labelled training reviews in the task's own template, one per line
    (`QUERY` with the review, then its `SUFFIX` with the true label, then a newline), in the training set's order.

    `max_tokens`: the demonstrations' token budget (the model's context window less the longest test query and
    label sentence); demonstrations that do not fit are left out from the end.  Returns (text, demonstrations kept)."""
    lines = [QUERY.format(text=r["text"]) + SUFFIX.format(label=r["label"]) + "\n" for r in train_rows]
    while lines and max_tokens is not None and len(encode_prompt(tokenizer, "".join(lines))) > max_tokens:
        lines.pop()
    return "".join(lines), len(lines)


@torch.no_grad()
def few_shot_log_likelihoods(
    reward, tokenizer, demonstrations: str, rows: Sequence[dict]
) -> list[dict[str, list[float]]]:
    """log p(Y_label | demonstrations X) under the reward LM for both labels, for each tokenized row (its
    `reward_prompt` text): the empty rationale after the few-shot prompt.  The same numbers as `label_log_likelihoods`
    of rows whose reward prompt is `demonstrations + reward_prompt` (tested), computed with the demonstrations' keys
    and values cached once instead of re-read for every row and label (with 50 demonstrations the prompt is ~40
    times longer than one query).  Returns one {label: [score]} per row."""
    if not demonstrations:
        return label_log_likelihoods(reward, rows, [[[]] for _ in rows], tokenizer)
    model, adapter_off = reward.scorer()
    device = reward.device
    hf = model.get_base_model() if hasattr(model, "get_base_model") else model
    cache_arg = cache_kwarg(hf.forward)
    positions = "position_ids" in inspect.signature(hf.forward).parameters
    prefix = encode_prompt(tokenizer, demonstrations)
    label_ids = {lab: encode_continuation(tokenizer, SUFFIX.format(label=lab)) for lab in LABELS}
    out = []
    with eval_mode(model), adapter_off, reward.autocast():
        first = model(input_ids=torch.tensor([prefix], device=device), use_cache=True)
        cache = next(getattr(first, n) for n in CACHE_KWARGS if getattr(first, n, None) is not None)
        for row in rows:
            full = encode_prompt(tokenizer, demonstrations + row["reward_prompt"])
            cached = full[: len(prefix)] == prefix  # else the query's first token merged with the last line's end
            scores = {}
            for lab in LABELS:
                ids = (full[len(prefix):] if cached else full) + label_ids[lab]
                kw = {}
                if cached:  # a copy: the forward appends to the cache it is given
                    kw[cache_arg] = copy.deepcopy(cache)
                    if positions:
                        kw["position_ids"] = torch.arange(len(prefix), len(prefix) + len(ids), device=device)[None]
                logits = model(input_ids=torch.tensor([ids], device=device), use_cache=cached, **kw).logits[0]
                n_y = len(label_ids[lab])
                logp = torch.log_softmax(logits[-n_y - 1 : -1].float(), dim=-1)
                target = torch.tensor(label_ids[lab], device=device)
                scores[lab] = [float(logp.gather(1, target[:, None]).sum())]
            out.append(scores)
    return out


# ---------------------------------------------------------------------------------------------------------------------
# The paper's replay-buffer seeding with "wishful" rationales.


def _symbol_ids(tokenizer) -> torch.Tensor:
    """(V,) bool: tokens that are not alphanumeric once stripped (the authors' `list_of_symbols`)."""
    pieces = tokenizer.batch_decode([[i] for i in range(len(tokenizer))])
    return torch.tensor([not p.strip().isalnum() for p in pieces])


@torch.no_grad()
def wishful_rationales(policy, tokenizer, constraints: LatentConstraints, rows: Sequence[dict], n_per_example: int = 20,
                       seed: int = 0) -> list[list[list[int]]]:
    """The authors' "wishful" rationales: for each training row (a tokenized contract row with `prompt` and
    `label`), `n_per_example` continuations of `prompt + " {true label} because it is"` sampled from the base LM
    (`policy` with its adapter off) at temperature 1 in the latent vocabulary of `constraints`, each cut at its
    first non-alphanumeric token; the non-empty ones (at least `constraints.min_length` tokens) are kept.

    Returns, per row, its kept latents (token ids, no stop token), for the trainer's replay buffer
    (`gfn_trl.tasks.base.seed_replay_buffer`).  Seeds are counter-based: `counter_seed("wishful", seed, row, j)`."""
    if n_per_example <= 0:
        return [[] for _ in rows]
    c = constraints
    sampler = LatentConstraints(c.stop_token_id, c.max_length, 0, c.allowed)
    symbols = _symbol_ids(tokenizer)
    device = next(policy.parameters()).device
    latents = []
    for r_i, row in enumerate(rows):
        wishful = encode_prompt(tokenizer, f"{row['prompt']} {row['label']} because it is")
        ids, mask = left_pad([wishful] * n_per_example, tokenizer.pad_token_id, device)
        seeds = [counter_seed("wishful", seed, r_i, j) for j in range(n_per_example)]
        with eval_mode(policy), policy.disable_adapter():
            z, lengths = sample_latents(policy, ids, mask, sampler, 1.0, tokenizer.pad_token_id, seeds)
        kept = []
        for b in range(n_per_example):
            toks = z[b, : int(lengths[b])].tolist()
            cut = next((k for k, t in enumerate(toks) if symbols[t]), len(toks))
            if cut >= max(1, c.min_length):
                kept.append(toks[:cut])
        latents.append(kept)
    return latents


def seed_replay_buffer(trainer, n_per_example: int = 20, seed: int = 0) -> int:
    """Fill a GFlowNet trainer's replay buffer as the authors did: `n_per_example` `wishful_rationales` per training
    review, each added with its reward (wrong-label penalty included).  Returns the number of latents added."""
    if n_per_example <= 0:
        return 0
    policy = trainer.accelerator.unwrap_model(trainer.model)
    latents = wishful_rationales(policy, trainer.processing_class, trainer.constraints, trainer.train_dataset,
                                 n_per_example, seed)
    return base.seed_replay_buffer(trainer, latents)


# ---------------------------------------------------------------------------------------------------------------------
# The recipe's task (recipes/subjectivity.py): its arguments are `num_labelled`, `subset_seed`, `balanced`,
# `test_dataset`, `wishful_rationales`, `validation`


M_STEP_ADAPTER = "m_step"


def reviews_per_pass(eval_samples: int, per_review: int) -> int:
    """Reviews sampled at once when each gets `per_review` rationales: no more sequences per pass than the
    evaluation's (4 reviews x `eval_samples`), at least one review; the paper's 100 rationales a review would
    otherwise make each pass 10 times as large."""
    return max(1, 4 * eval_samples // per_review)


def m_step_dataset(rows: Sequence[dict], latents: Sequence[Sequence[Sequence[int]]], tokenizer=None) -> Dataset:
    """The M-step's supervised data: for each tokenized labelled row (X, its true label) and each of its rationales Z
    (token ids, possibly empty), `input_ids` = X Z Y_true (the reward prompt's tokens, Z, the label sentence's tokens,
    as the judge scores them) and `completion_mask` = 1 on Y_true only, the pre-tokenized prompt-completion form TRL's
    SFTTrainer takes.  Rows are in order: row 0's rationales, then row 1's, ...

    Raises:
        ValueError: `rows` and `latents` of different lengths.
    """
    if len(rows) != len(latents):
        raise ValueError(f"{len(rows)} rows but {len(latents)} lists of rationales.")
    examples = []
    for row, zs in zip(rows, latents):
        y = _label_suffix_ids(row, tokenizer)[row["label"]]
        for z in zs:
            context = list(row["reward_prompt_ids"]) + [int(t) for t in z]
            examples.append({"input_ids": context + list(y), "completion_mask": [0] * len(context) + [1] * len(y)})
    return Dataset.from_list(examples)


def train_m_step(policy, tokenizer, dataset: Dataset, args, steps: int, learning_rate: float, batch_size: int,
                 gradient_accumulation_steps: int = 1) -> dict:
    """Train a new LoRA adapter `m_step` (a copy of the LoRA settings of the policy's active adapter, the E-step's:
    the recipes' "default"; freshly initialised) on `dataset` (`m_step_dataset`) with TRL's SFTTrainer: `steps`
    optimiser steps of `batch_size` × `gradient_accumulation_steps` examples at `learning_rate`, linear schedule with
    20 % warm-up (the authors' 20 of 100 steps), completion-only loss.  The E-step's adapter is active again on
    return, its weights and the policy's config untouched (`gfn_trl.models.config_kept`).  `args`: the run's
    settings (seed, device, precision, logging).  Returns the trainer's final metrics (`train_loss`, ...).

    Raises:
        ValueError: the policy already has an adapter named `m_step`.
    """
    import tempfile

    from trl import SFTConfig, SFTTrainer

    e_step = policy.active_adapter  # the policy's own adapter, whatever its name
    if M_STEP_ADAPTER in policy.peft_config:
        raise ValueError(f"The policy already has an adapter named {M_STEP_ADAPTER!r} (adapters: "
                         f"{sorted(policy.peft_config)}): the M-step would overwrite it.")
    config = copy.deepcopy(policy.peft_config[e_step])
    config.inference_mode = False
    policy.add_adapter(M_STEP_ADAPTER, config)
    policy.set_adapter(M_STEP_ADAPTER)
    try:
        with tempfile.TemporaryDirectory() as out:
            sft_args = SFTConfig(
                output_dir=out, max_steps=steps, per_device_train_batch_size=batch_size,
                gradient_accumulation_steps=gradient_accumulation_steps, learning_rate=learning_rate,
                warmup_steps=round(0.2 * steps), lr_scheduler_type="linear", completion_only_loss=True,
                save_strategy="no", report_to="none", logging_steps=max(1, steps // 4), seed=args.seed,
                use_cpu=args.use_cpu, bf16=args.bf16, fp16=args.fp16, disable_tqdm=args.disable_tqdm,
                remove_unused_columns=False, dataloader_pin_memory=torch.cuda.is_available(),
                # the run's activation checkpointing (the new name: TRL's deprecated alias would warn)
                gradient_checkpointing=None, activation_checkpointing=bool(
                    getattr(args, "activation_checkpointing", None) or getattr(args, "gradient_checkpointing", False)))
            with config_kept(policy):  # a second adapter: the policy's config (ids, use_cache) stays as it was
                result = SFTTrainer(model=policy, args=sft_args, train_dataset=dataset,
                                    processing_class=tokenizer).train()
    except BaseException:
        policy.set_adapter(e_step)
        policy.delete_adapter(M_STEP_ADAPTER)  # a half-trained judge is not saved with the run
        raise
    policy.set_adapter(e_step)
    return result.metrics


def validation_split(pool: Dataset, train: Dataset, n: int) -> Dataset:
    """`n` reviews of the training pool for choosing settings: the last `n` rows of `pool` that are not in the
    labelled subset `train` (the test reviews are never in the pool)."""
    chosen = set(train["text"])
    rest = [i for i, t in enumerate(pool["text"]) if t not in chosen]
    if len(rest) < n:
        raise ValueError(f"--validation {n}: the training pool has only {len(rest)} reviews outside the "
                         f"{len(train)} labelled ones.")
    return pool.select(rest[len(rest) - n:])


class SubjectivityTask(Task):
    """Subjectivity classification with a latent rationale: a low-data training subset, wishful rationales in the
    replay buffer, the `zero_shot` (empty rationale), `few_shot` (the labelled reviews as demonstrations) and `untuned`
    baselines, majority-vote metrics of `evaluate`.  `--trainer sft` is the authors' supervised baseline: TRL's
    SFTTrainer on X -> Y (the label sentence, no rationale), evaluated by the fine-tuned model's own comparison of the
    two labels' Y after an empty rationale."""

    # SUBJ JSON Lines files, no encoder.  No gold rationales, but `--trainer sft` has a target: the label sentence Y
    # (the `gold` column of `to_contract` under sft), as in the authors' Subj_obj_finetuning notebook.
    spec = TaskSpec(
        "subjectivity", data_formats=(".jsonl", ".json"), gold=True,
        summary=(
            "subjectivity classification with a latent rationale (Hu et al. 2024, §4.3): sample a short rationale "
            "Z for a movie-review sentence X with probability ∝ p_LM(Z Y | X), Y the label's words; the label is "
            "read from the frozen LM after X Z."
        ),
    )
    baselines = ("zero_shot", "few_shot", "untuned")

    def check(self, ctx: RunContext) -> None:
        if ctx.recipe.num_train is not None:
            raise ValueError("The subjectivity recipe draws its training set with --num_labelled (10, 20 or 50), "
                             "not --num_train.")
        if ctx.task_args.num_labelled < 1 or ctx.task_args.wishful_rationales < 0 or ctx.task_args.validation < 0:
            raise ValueError("--num_labelled must be at least 1, --wishful_rationales and --validation at least 0.")
        t = ctx.task_args
        if t.calibration_rationales < 0 or (t.calibration_rationales and not t.calibrate):
            raise ValueError(f"--calibration_rationales {t.calibration_rationales}: give 0, or a number of rationales "
                             "per labelled review together with --calibrate true (it measures the calibrated "
                             "judge's threshold).")
        if t.m_step_steps < 0:
            raise ValueError(f"--m_step_steps {t.m_step_steps}: give 0 (no M-step) or a number of steps.")
        if self._runs_m_step(ctx):
            if t.m_step_rationales < 1 or t.m_step_batch_size < 1 or t.m_step_gradient_accumulation_steps < 1 \
                    or not t.m_step_learning_rate > 0:
                raise ValueError("--m_step_rationales, --m_step_batch_size and --m_step_gradient_accumulation_steps "
                                 "must be at least 1 and --m_step_learning_rate above 0 (got "
                                 f"{t.m_step_rationales}, {t.m_step_batch_size}, "
                                 f"{t.m_step_gradient_accumulation_steps}, {t.m_step_learning_rate}).")

    def adapter_uses(self, ctx: RunContext) -> list[tuple[str, str]]:
        """`Task.adapter_uses`: the M-step adds a second adapter beside the policy's; the wishful rationales (the
        GFlowNet's replay seeds) and the untuned baseline sample with the adapter disabled (the zero-shot and
        few-shot baselines score with the reward LM, which full fine-tuning keeps as a frozen copy)."""
        t, recipe = ctx.task_args, ctx.recipe
        needs = []
        if self._runs_m_step(ctx):
            needs.append(("--m_step_steps 0", f"--m_step_steps {t.m_step_steps} trains a second adapter beside it"))
        if t.wishful_rationales and getattr(recipe, "trainer", None) == "gfn":
            needs.append(("--wishful_rationales 0",
                          f"--wishful_rationales {t.wishful_rationales} samples with the adapter disabled"))
        if getattr(t, "untuned_baseline", False) and not getattr(recipe, "skip_baseline", False):
            needs.append(("--untuned_baseline false", "the untuned baseline samples with the adapter disabled"))
        return needs

    def data_sources(self, ctx: RunContext) -> dict[str, str | None]:
        return {"--dataset": ctx.recipe.dataset, "--test_dataset": ctx.task_args.test_dataset}

    def baseline_methods(self, ctx: RunContext) -> tuple[str, ...]:
        return tuple(b for b in self.baselines if b != "untuned" or ctx.task_args.untuned_baseline)

    def load(self, ctx: RunContext) -> TaskData:
        recipe, t = ctx.recipe, ctx.task_args
        data = load_data(load_subj, recipe.dataset)
        if t.test_dataset is not None:
            test = load_data(load_subj, t.test_dataset, "--test_dataset", split="test")
            held_out = set(test["text"])
            pool = data.filter(lambda r: r["text"] not in held_out)
        else:
            pool, test = split(data, recipe.num_eval)
        test = test.select(range(min(recipe.num_eval, len(test))))
        try:
            train = low_data_subset(pool, t.num_labelled, t.subset_seed, balanced=t.balanced)
        except ValueError as e:
            raise ValueError(f"--num_labelled {t.num_labelled}: {e} Pass a smaller --num_labelled.") from e
        if t.calibrate and len(set(train["label"])) < 2:  # the threshold is the mean margin of both labels' reviews
            raise ValueError(f"--calibrate true: the {len(train)} labelled reviews are all {train['label'][0]!r}, and "
                             "the calibrated judge's threshold (their mean zero-shot margin) needs reviews of both "
                             "labels. Pass --num_labelled >= 2 with --balanced true, or --calibrate false.")
        assert set(train["text"]).isdisjoint(test["text"]), "training and test reviews overlap"
        if t.validation:  # evaluate on held-out training-pool reviews instead: the test reviews are not looked at
            val = validation_split(pool, train, t.validation)
            assert set(val["text"]).isdisjoint(test["text"]) and set(val["text"]).isdisjoint(train["text"])
            return TaskData(train, val)
        return TaskData(train, test)

    def to_contract(self, ctx: RunContext, data: TaskData) -> Dataset:
        contract, t = to_contract(data.train), ctx.task_args
        # the judge's threshold for an empty rationale (zero-shot) and for sampled rationales (training, untuned, the
        # trained policy): the same unless --calibration_rationales measures the latter on rationales
        ctx.zero_shot_threshold = ctx.threshold = 0.0
        if t.calibrate:
            ctx.zero_shot_threshold = ctx.threshold = calibration_threshold(ctx.model, ctx.tokenizer, data.train)
            say(f"Calibrated judge: objective iff log p(Y_objective) - log p(Y_subjective) > "
                f"{ctx.zero_shot_threshold:.3f} after an empty rationale (the mean zero-shot margin of the "
                f"{len(data.train)} labelled reviews)")
            if t.calibration_rationales:
                ctx.threshold = self._rationale_threshold(ctx, data.train)
                say(f"  and > {ctx.threshold:.3f} after a sampled rationale (the mean margin of "
                    f"{t.calibration_rationales} untuned rationales per labelled review): the training penalty's and "
                    "the sampled rationales' threshold")
            # the training reward's wrong-label test is the calibrated judge's
            margins = [ctx.threshold if lab == "objective" else -ctx.threshold for lab in contract["label"]]
            contract = contract.add_column("contrast_margin", margins)
        if ctx.recipe.trainer == "sft":  # SFT's target: the label sentence Y itself, right after X
            contract = contract.add_column("gold", contract["suffix"])
        return contract

    def replay_seeds(self, ctx: RunContext, data: TaskData) -> base.ReplaySeeds:
        b = ctx.built
        return base.ReplaySeeds(wishful_rationales(b.policy, ctx.tokenizer, b.constraints, b.trainer.train_dataset,
                                                   ctx.task_args.wishful_rationales, seed=ctx.args.seed))

    def prepare_evaluation(self, ctx: RunContext, data: TaskData) -> None:
        # Evaluation rows carry no contrast suffix: sample_and_score then scores each rationale once,
        # log p(Z Y_true | X) without the training penalty, and `evaluate` compares the two labels itself.
        budget = ctx.built.constraints.max_length
        ctx.eval = judged_rows(data.eval, ctx.tokenizer, ctx.model.config, budget, "eval")
        if ctx.task_args.m_step_steps and not self._runs_m_step(ctx):
            say(f"Note: --m_step_steps {ctx.task_args.m_step_steps} does not apply to --trainer sft, which samples "
                "no rationales to train the M-step's judge on: no sft_m_step row.")
        if self._runs_m_step(ctx):  # the labelled reviews, to sample the M-step's rationales for
            ctx.m_step_rows = judged_rows(data.train, ctx.tokenizer, ctx.model.config, budget, "train")
        # the few-shot baseline's demonstrations, within the context window (with room for a test query and Y)
        max_pos = getattr(ctx.model.config.get_text_config(), "max_position_embeddings", None)
        need = max(len(r["reward_prompt_ids"]) + len(r["suffix_ids"]) for r in ctx.eval) + 8
        ctx.demonstrations = few_shot_demonstrations(list(data.train), ctx.tokenizer,
                                                     None if max_pos is None else max_pos - need)

    def _rationale_threshold(self, ctx: RunContext, train: Dataset) -> float:
        """`rationale_calibration_threshold` before the trainer is built: the run's latent space as the build makes
        it (the pad token set as it sets it: the sampler pads with it)."""
        from ..trainers.setup import ensure_pad_token, latent_space

        args, n = ctx.args, ctx.task_args.calibration_rationales
        ensure_pad_token(ctx.tokenizer)
        constraints = latent_space(ctx.tokenizer, args.max_completion_length, args.min_completion_length,
                                   args.stop_token, self.vocab_mask(ctx), None, ctx.model)
        # at most the 4 reviews a pass it took when its documented validation run (v5) was made
        per_pass = min(4, reviews_per_pass(ctx.recipe.eval_samples, n))
        return rationale_calibration_threshold(ctx.model, ctx.tokenizer, train, constraints, n, seed=args.seed,
                                               prompts_per_batch=per_pass)

    @staticmethod
    def _own_judge(ctx: RunContext) -> LikelihoodReward:
        """The policy scoring with its active adapter on (SFT's, or the M-step's while active), not the base LM."""
        b = ctx.built
        return LikelihoodReward(b.policy, b.policy, b.constraints.stop_token_id, ctx.tokenizer.pad_token_id,
                                ctx.args.reward_chunk_size, b.trainer.accelerator.autocast)

    @staticmethod
    def _runs_m_step(ctx: RunContext) -> bool:
        """Whether the run makes an M-step: --m_step_steps > 0 and a trainer that samples rationales.  With
        --trainer sft the flag does not apply (said at the run, not refused: `compare.py --trainers gfn sft --
        --m_step_steps N`, the paper's GFlowNet + M-step against SFT, gives every run the same flags, as the paper's
        config file does)."""
        return bool(ctx.task_args.m_step_steps) and getattr(ctx.recipe, "trainer", None) != "sft"

    def trained_methods(self, ctx: RunContext) -> tuple[str, ...]:
        trainer = ctx.recipe.trainer
        return (trainer, f"{trainer}_m_step") if self._runs_m_step(ctx) else (trainer,)

    def m_step(self, ctx: RunContext) -> Evaluated:
        """The M-step (module docstring): rationales of the labelled reviews from the trained policy, a new adapter
        trained on X Z -> Y, then the E-step's test rationales judged by it."""
        b, t = ctx.built, ctx.task_args
        per_pass = reviews_per_pass(ctx.recipe.eval_samples, t.m_step_rationales)
        trained = sample_and_score(b.policy, None, ctx.tokenizer, b.constraints, ctx.m_step_rows,  # not scored
                                   t.m_step_rationales, ctx.recipe.eval_temperature, seed=ctx.args.seed,
                                   prompts_per_batch=per_pass)
        dataset = m_step_dataset(ctx.m_step_rows, [s.tokens for s in trained], ctx.tokenizer)
        say(f"M-step: a new adapter on {len(dataset)} (review, rationale) pairs of the {len(ctx.m_step_rows)} "
            f"labelled reviews, {t.m_step_steps} steps")
        own = b.policy.active_adapter  # the E-step's adapter, active again after the judging
        fit = train_m_step(b.policy, ctx.tokenizer, dataset, ctx.args, t.m_step_steps, t.m_step_learning_rate,
                           t.m_step_batch_size, t.m_step_gradient_accumulation_steps)
        e_step = ctx.e_step  # the E-step's own test rationales and their base-LM metrics
        b.policy.set_adapter(M_STEP_ADAPTER)
        try:
            lls = label_log_likelihoods(self._own_judge(ctx), [s.row for s in e_step.scored],
                                        [s.tokens for s in e_step.scored], ctx.tokenizer)
        finally:
            b.policy.set_adapter(own)
        metrics, details = label_metrics(lls, [s.row["label"] for s in e_step.scored], return_details=True)
        for key in ("log_likelihood/mean", "log_likelihood/max"):  # the rationales' base-LM likelihood
            metrics[key] = e_step.metrics[key]
        metrics["m_step/train_loss"] = fit.get("train_loss", float("nan"))
        details = [{**d, "log_likelihood": e["log_likelihood"]} for d, e in zip(details, e_step.details)]
        return Evaluated(e_step.scored, metrics, details)

    def evaluate(self, ctx: RunContext, method: str) -> Evaluated:
        if method.endswith("_m_step"):
            return self.m_step(ctx)
        if method == "few_shot":  # Z = nothing after the labelled reviews as demonstrations
            text, kept = ctx.demonstrations
            lls = few_shot_log_likelihoods(ctx.built.reward, ctx.tokenizer, text, ctx.eval)
            metrics, details = label_metrics(lls, [r["label"] for r in ctx.eval], return_details=True)
            metrics["demonstrations"] = kept
            scored = [Scored(r, [[]], [""], ll[r["label"]]) for r, ll in zip(ctx.eval, lls)]
            return Evaluated(scored, metrics, details)
        reward = ctx.built.reward
        if method == "sft":  # the fine-tuned model's own choice of Y after X (the adapter on), Z = nothing
            reward = self._own_judge(ctx)
        if method in ("zero_shot", "sft"):
            scored = zero_shot(reward, ctx.tokenizer, ctx.eval)  # Z = nothing
        else:  # the untuned LM's rationales (same prompt, same sampler), or the trained policy's
            scored = ctx.sample(ctx.eval, disable_adapter=method in self.baselines)
        # the base LM's judgements use the run's threshold (calibrated or 0; an empty rationale's for zero-shot); SFT's
        # own judge is not recalibrated
        threshold = {"sft": 0.0, "zero_shot": ctx.zero_shot_threshold}.get(method, ctx.threshold)
        metrics, details = evaluate(scored, reward, ctx.tokenizer, return_details=True, threshold=threshold)
        if method == ctx.recipe.trainer:  # what an M-step judges
            ctx.e_step = Evaluated(scored, metrics, details)
        return Evaluated(scored, metrics, details)

    def samples(self, ctx: RunContext, results: dict[str, Evaluated]) -> list[dict]:
        return [{"method": method, "text": s.row["text"], "label": s.row["label"], "rationales": s.texts,
                 "predictions": d["predictions"], "log_likelihood": d["log_likelihood"]}
                for method, r in results.items() for s, d in zip(r.scored, r.details)]

    def summary(self, ctx: RunContext, data: TaskData, results: dict[str, Evaluated], seeded: int) -> Summary:
        train, test = data.train, data.eval
        note = (f"\n{len(train)} labelled reviews ({sum(lab == 'objective' for lab in train['label'])} objective), "
                f"{len(test)} test reviews, {seeded} wishful rationales in the replay buffer before training")
        examples = [
            {"review": s.row["text"], "label": s.row["label"],
             **{f"{m}": f"{r.scored[i].texts[0]!r} -> {r.details[i]['predictions'][0]}" for m, r in results.items()}}
            for i, s in enumerate(results[ctx.recipe.trainer].scored[:3])
        ]
        return Summary("subjectivity classification", examples, note)


TASK = SubjectivityTask()
