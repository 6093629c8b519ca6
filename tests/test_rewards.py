"""Per-prefix rewards: the packed fixed-suffix pass equals the naive loop; the stop-token pass equals direct scoring."""

import pytest
import torch

from gfn_trl.rewards import prefix_log_rewards, suffix_log_rewards_naive
from gfn_trl.sampling import left_pad, position_ids_from_mask
from gfn_trl.testing import ARCHS, tiny_model

V = 40
STOP = 0


def _batch(seed, B=6, T=6):
    g = torch.Generator().manual_seed(seed)
    prompts = [torch.randint(1, V, (int(torch.randint(1, 9, (), generator=g)),), generator=g).tolist() for _ in range(B)]
    suffixes = [torch.randint(1, V, (int(torch.randint(1, 6, (), generator=g)),), generator=g).tolist() for _ in range(B)]
    lengths = torch.randint(0, T + 1, (B,), generator=g)
    lengths[0] = T  # at least one full-width latent
    lengths[1] = 0  # and an empty one
    z = torch.randint(1, V, (B, T), generator=g)
    z[torch.arange(T)[None, :] >= lengths[:, None]] = STOP
    return prompts, suffixes, z, lengths


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_packed_suffix_rewards_equal_naive_loop(arch, attn):
    model = tiny_model(arch, V, seed=1).eval()
    model.config._attn_implementation = attn
    prompts, suffixes, z, lengths = _batch(seed=2)
    packed = prefix_log_rewards(model, prompts, z, lengths, STOP, STOP, suffixes)
    naive = suffix_log_rewards_naive(model, prompts, z, lengths, suffixes, STOP)
    assert packed.shape == (z.shape[0], z.shape[1] + 1)
    torch.testing.assert_close(packed, naive, atol=1e-4, rtol=0)
    # the values are real log-likelihoods: negative, and they differ across prefixes
    assert (packed[0] < 0).all() and packed[0].unique().numel() == packed.shape[1]


def test_packed_rewards_do_not_depend_on_chunking_or_batch_neighbours():
    model = tiny_model("llama", V, seed=3).eval()
    prompts, suffixes, z, lengths = _batch(seed=4, B=5)
    whole = prefix_log_rewards(model, prompts, z, lengths, STOP, STOP, suffixes)
    chunked = prefix_log_rewards(model, prompts, z, lengths, STOP, STOP, suffixes, chunk_size=2)
    torch.testing.assert_close(whole, chunked, atol=1e-5, rtol=0)
    alone = prefix_log_rewards(model, prompts[2:3], z[2:3], lengths[2:3], STOP, STOP, suffixes[2:3])
    torch.testing.assert_close(whole[2:3, : alone.shape[1]], alone, atol=1e-5, rtol=0)


def _direct_log_prob(model, context, continuation):
    """log p(continuation | context) by one plain forward pass."""
    ids = torch.tensor([context + continuation])
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=ids).logits[0].float(), -1)
    return sum(logp[len(context) - 1 + t, tok].item() for t, tok in enumerate(continuation))


@pytest.mark.parametrize("arch", ["gpt2", "qwen2"])
def test_stop_token_rewards_equal_direct_scoring(arch):
    model = tiny_model(arch, V, seed=5).eval()
    prompts, _, z, lengths = _batch(seed=6)
    log_r = prefix_log_rewards(model, prompts, z, lengths, STOP, STOP, None)
    for b in range(z.shape[0]):
        for k in range(int(lengths[b]) + 1):
            want = _direct_log_prob(model, prompts[b], z[b, :k].tolist() + [STOP])
            assert abs(log_r[b, k].item() - want) < 1e-4, (b, k)
        assert (log_r[b, int(lengths[b]) + 1 :] == 0).all()  # states past the latent are zeroed


def test_fixed_suffix_reward_has_no_stop_term():
    """log R(s_k) = log p(z_1..z_k Y | X): the stop token is not scored."""
    model = tiny_model("gpt2", V, seed=7).eval()
    prompt, suffix = [3, 4, 5], [6, 7]
    z = torch.tensor([[8, 9]])
    log_r = prefix_log_rewards(model, [prompt], z, torch.tensor([2]), STOP, STOP, [suffix])
    assert abs(log_r[0, 2].item() - _direct_log_prob(model, prompt, [8, 9] + suffix)) < 1e-4
    assert abs(log_r[0, 1].item() - _direct_log_prob(model, prompt, [8] + suffix)) < 1e-4


def test_left_padding_helpers():
    ids, mask = left_pad([[5, 6], [7]], 0)
    assert ids.tolist() == [[5, 6], [0, 7]] and mask.tolist() == [[1, 1], [0, 1]]
    assert position_ids_from_mask(mask).tolist() == [[0, 1], [0, 0]]


_PROPERTY_MODEL = None


def _property_model():
    global _PROPERTY_MODEL
    if _PROPERTY_MODEL is None:
        _PROPERTY_MODEL = tiny_model("qwen2", V, seed=11).eval()
    return _PROPERTY_MODEL


from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


@settings(max_examples=25, deadline=None)
@given(
    rows=st.lists(
        st.tuples(
            st.lists(st.integers(1, V - 1), min_size=1, max_size=6),  # prompt
            st.lists(st.integers(1, V - 1), min_size=0, max_size=5),  # latent
            st.lists(st.integers(1, V - 1), min_size=1, max_size=4),  # suffix
        ),
        min_size=1,
        max_size=4,
    ),
    stop_reward=st.booleans(),
)
def test_reward_pass_property(rows, stop_reward):
    """Random shapes, lengths and padding: finite per-prefix rewards, equal to the naive loop, zero past the latent."""
    model = _property_model()
    prompts = [r[0] for r in rows]
    suffixes = None if stop_reward else [r[2] for r in rows]
    lengths = torch.tensor([len(r[1]) for r in rows])
    T = max(1, int(lengths.max()))
    z = torch.full((len(rows), T), STOP)
    for b, r in enumerate(rows):
        z[b, : len(r[1])] = torch.tensor(r[1], dtype=torch.long)
    log_r = prefix_log_rewards(model, prompts, z, lengths, STOP, STOP, suffixes)
    assert torch.isfinite(log_r).all()
    inside = torch.arange(T + 1)[None, :] <= lengths[:, None]
    assert (log_r[inside] < 0).all() and (log_r[~inside] == 0).all()
    if not stop_reward:
        naive = suffix_log_rewards_naive(model, prompts, z, lengths, suffixes, STOP)
        torch.testing.assert_close(log_r, naive, atol=1e-4, rtol=0)


def test_contrast_suffix_penalises_prefixes_that_prefer_the_wrong_suffix():
    from gfn_trl.rewards import LikelihoodReward

    model = tiny_model("gpt2", V, seed=12).eval()
    rows = [{"reward_prompt_ids": [3, 4], "suffix_ids": [5, 6], "contrast_suffix_ids": [7, 8], "gfn_has_suffix": True},
            {"reward_prompt_ids": [3, 4], "suffix_ids": [5, 6], "contrast_suffix_ids": [], "gfn_has_suffix": True}]
    z = torch.tensor([[9, 10, 11], [9, 10, 11]])
    lengths = torch.tensor([3, 3])
    reward = LikelihoodReward(None, model, STOP, STOP, contrast_penalty=-50.0)
    got = reward(rows, z, lengths)
    right = prefix_log_rewards(model, [[3, 4]] * 2, z, lengths, STOP, STOP, [[5, 6]] * 2)
    wrong = prefix_log_rewards(model, [[3, 4]] * 2, z, lengths, STOP, STOP, [[7, 8]] * 2)
    prefers_wrong = wrong[0] > right[0]
    assert 0 < int(prefers_wrong.sum()) < 4  # this seed gives a mix of both cases
    torch.testing.assert_close(got[0], right[0] - 50.0 * prefers_wrong)
    torch.testing.assert_close(got[1], right[1])  # no contrast suffix, no penalty
