"""Moved to `gfn_trl.evaluation.text_metrics`; kept so old imports work."""

from .evaluation.text_metrics import (
    PAPER_BERTSCORE_MODEL,
    PAPER_DIVERSITY_ENCODER,
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
