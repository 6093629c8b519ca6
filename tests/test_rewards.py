"""Per-prefix rewards: the packed fixed-suffix pass equals the naive loop; the stop-token pass equals direct scoring.

Every path of the packed scorer is checked against the naive loop: prompts shared by several rows (read-only
prompt cache) or not, 1..S suffix copies per row of the copies pass, chunked output layer and copies pass, full
logits for LMs whose logits are not head(hidden) (soft-capping, logit scale), the one-pass layout for caches that
cannot be shared, the per-prefix loop for sliding windows, a PEFT policy with its adapter disabled.
"""

import pytest
import torch

import gfn_trl.rewards as rewards
import gfn_trl.rewards.packed as engine
from gfn_trl.rewards import capability, prefix_log_rewards, suffix_log_rewards_naive
from gfn_trl.sampling import left_pad, position_ids_from_mask
from gfn_trl.testing import ARCHS, UNPACKABLE_ARCHS, tiny_model

V = 40
STOP = 0


def _batch(seed, B=6, T=6, shared=False):
    """Prompts of 1-8 tokens (with `shared`, rows 0, 1, 3 share one prompt and rows 2, 5 another), suffixes of
    1-5, latents of 0..T tokens (row 0 full, row 1 empty)."""
    g = torch.Generator().manual_seed(seed)
    prompts = [
        torch.randint(1, V, (int(torch.randint(1, 9, (), generator=g)),), generator=g).tolist() for _ in range(B)
    ]
    if shared:
        prompts[1] = prompts[3] = prompts[0]
        prompts[5] = prompts[2]
    suffixes = [
        torch.randint(1, V, (int(torch.randint(1, 6, (), generator=g)),), generator=g).tolist() for _ in range(B)
    ]
    lengths = torch.randint(0, T + 1, (B,), generator=g)
    lengths[0] = T  # at least one full-width latent
    lengths[1] = 0  # and an empty one
    z = torch.randint(1, V, (B, T), generator=g)
    z[torch.arange(T)[None, :] >= lengths[:, None]] = STOP
    return prompts, suffixes, z, lengths


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("attn", ["eager", "sdpa"])
@pytest.mark.parametrize("shared", [False, True])
def test_packed_suffix_rewards_equal_naive_loop(arch, attn, shared):
    model = tiny_model(arch, V, seed=1).eval()
    model.config._attn_implementation = attn
    assert capability._split_lm_head(model) is not None  # the output layer runs on the scored positions only
    prompts, suffixes, z, lengths = _batch(seed=2, shared=shared)
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


@pytest.mark.parametrize("arch", ["gpt2", "qwen2", "gpt_neox"])
@pytest.mark.parametrize("shared", [False, True])
def test_stop_token_rewards_equal_direct_scoring(arch, shared):
    model = tiny_model(arch, V, seed=5).eval()
    prompts, _, z, lengths = _batch(seed=6, shared=shared)
    log_r = prefix_log_rewards(model, prompts, z, lengths, STOP, STOP, None)
    for b in range(z.shape[0]):
        for k in range(int(lengths[b]) + 1):
            want = _direct_log_prob(model, prompts[b], z[b, :k].tolist() + [STOP])
            assert abs(log_r[b, k].item() - want) < 1e-4, (b, k)
        assert (log_r[b, int(lengths[b]) + 1 :] == 0).all()  # states past the latent are zeroed
    # the plain one-pass form (for LMs the packed layout cannot serve) agrees
    plain = rewards.stop_log_rewards_plain(model, prompts, z, lengths, STOP, STOP)
    torch.testing.assert_close(plain, log_r, atol=1e-4, rtol=0)


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
            st.integers(0, 2),  # which of the drawn prompts: rows often share one
            st.lists(st.integers(1, V - 1), min_size=0, max_size=5),  # latent
            st.lists(st.integers(1, V - 1), min_size=1, max_size=4),  # suffix
        ),
        min_size=1,
        max_size=5,
    ),
    pool=st.lists(st.lists(st.integers(1, V - 1), min_size=1, max_size=6), min_size=3, max_size=3),  # prompts
    stop_reward=st.booleans(),
    duplicate=st.booleans(),
)
def test_reward_pass_property(rows, pool, stop_reward, duplicate):
    """Random shapes, lengths, padding, shared prompts, duplicate rows: finite per-prefix rewards, equal to the naive
    loop, zero past the latent."""
    model = _property_model()
    if duplicate:
        rows = rows + rows[:1]
    prompts = [pool[r[0]] for r in rows]
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


@pytest.mark.parametrize("copies_per_row", [1, 2, 7])
def test_copies_per_row_and_chunking_do_not_change_rewards(monkeypatch, copies_per_row):
    """Whatever number of suffix copies shares a row of the copies pass, however the output layer and the copies
    pass are chunked, the rewards are the naive loop's."""
    model = tiny_model("llama", V, seed=13).eval()
    prompts, suffixes, z, lengths = _batch(seed=14, B=7, T=6, shared=True)
    naive = suffix_log_rewards_naive(model, prompts, z, lengths, suffixes, STOP)
    monkeypatch.setattr(engine, "_copies_per_row", lambda *args: copies_per_row)
    monkeypatch.setattr(engine, "_HEAD_CHUNK_ELEMENTS", 3 * V)  # 3 positions at a time
    monkeypatch.setattr(engine, "_KV_CHUNK_ELEMENTS", {"cpu": 1, "other": 1})  # one row of the copies pass at a time
    packed = prefix_log_rewards(model, prompts, z, lengths, STOP, STOP, suffixes)
    torch.testing.assert_close(packed, naive, atol=1e-4, rtol=0)


def test_copies_per_row_cost_model():
    """One copy per row when most copies are dead or the keys are cheap to copy; several otherwise."""
    full = torch.full((16,), 21)  # 16 latents of 20 tokens: no dead copy
    assert 1 < engine._copies_per_row(full, 60, 11, 256) <= 21
    ragged = torch.tensor([21] + [2] * 15)  # one long latent, fifteen short ones
    assert engine._copies_per_row(ragged, 60, 11, 256) <= 2


def test_empty_latents():
    model = tiny_model("gpt2", V, seed=15).eval()
    prompts, suffixes = [[3, 4], [3, 4], [5]], [[6, 7], [8], [9, 10, 11]]
    z, lengths = torch.zeros(3, 0, dtype=torch.long), torch.zeros(3, dtype=torch.long)
    packed = prefix_log_rewards(model, prompts, z, lengths, STOP, STOP, suffixes)
    torch.testing.assert_close(packed, suffix_log_rewards_naive(model, prompts, z, lengths, suffixes, STOP))
    stop = prefix_log_rewards(model, prompts, z, lengths, STOP, STOP, None)
    assert abs(stop[2, 0].item() - _direct_log_prob(model, [5], [STOP])) < 1e-4


def _other_arch(name):
    """Tiny LMs outside ARCHS: logits that are not head(hidden), or sliding-window attention."""
    from transformers import (
        CohereConfig,
        CohereForCausalLM,
        Gemma2Config,
        Gemma2ForCausalLM,
        MistralConfig,
        MistralForCausalLM,
    )

    torch.manual_seed(16)
    common = dict(vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=128, bos_token_id=0, eos_token_id=0, pad_token_id=0)
    if name == "cohere":  # logit_scale, full attention: full logits, shared prompt cache
        return CohereForCausalLM(CohereConfig(**common)).eval()
    if name == "gemma2":  # soft-capped logits, alternating sliding/full layers: full logits, one packed pass
        return Gemma2ForCausalLM(Gemma2Config(**common, head_dim=8, final_logit_softcapping=3.0)).eval()
    if name == "mistral_window":  # every layer slides over 4 tokens: one pass per prefix
        return MistralForCausalLM(MistralConfig(**common, sliding_window=4)).eval()
    raise ValueError(name)


@pytest.mark.parametrize("name", ["cohere", "gemma2", "mistral_window"])
def test_fallbacks_equal_naive_loop(name):
    import warnings

    model = _other_arch(name)
    assert (capability._split_lm_head(model) is None) == (name != "mistral_window")
    prompts, suffixes, z, lengths = _batch(seed=17, shared=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        packed = prefix_log_rewards(model, prompts, z, lengths, STOP, STOP, suffixes)
        stop = prefix_log_rewards(model, prompts, z, lengths, STOP, STOP, None)
    assert any("sliding window" in str(w.message) for w in caught) == (name == "mistral_window")
    torch.testing.assert_close(packed, suffix_log_rewards_naive(model, prompts, z, lengths, suffixes, STOP),
                               atol=1e-4, rtol=0)
    for b in (0, 3):
        k = int(lengths[b])
        assert abs(stop[b, k].item() - _direct_log_prob(model, prompts[b], z[b, :k].tolist() + [STOP])) < 1e-4


@pytest.mark.parametrize("arch", UNPACKABLE_ARCHS)
def test_lms_the_packed_layout_cannot_serve_get_exact_rewards_one_pass_per_prefix(arch):
    """ALiBi LMs (BLOOM, MPT, Falcon with alibi) read positions from the token order, GPT-Neo's local layers their
    window, and Mamba's state runs over the tokens in order: the packed layout would crash on them or (MPT, GPT-Neo)
    return wrong rewards without a word. They are scored by ordinary passes, with a warning, and equal plain
    forward passes, also with `final_only` and in chunks."""
    import warnings

    model = tiny_model(arch, V, seed=22).eval()
    assert capability._packing_obstacle(model) is not None
    prompts, suffixes, z, lengths = _batch(seed=23, shared=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        packed = prefix_log_rewards(model, prompts, z, lengths, STOP, STOP, suffixes)
        stop = prefix_log_rewards(model, prompts, z, lengths, STOP, STOP, None)
    assert any("would not be exact" in str(w.message) for w in caught)
    for b in range(z.shape[0]):
        for k in range(int(lengths[b]) + 1):
            latent = z[b, :k].tolist()
            assert abs(packed[b, k].item() - _direct_log_prob(model, prompts[b], latent + suffixes[b])) < 1e-4
            assert abs(stop[b, k].item() - _direct_log_prob(model, prompts[b], latent + [STOP])) < 1e-4
    final = rewards.final_log_rewards(model, prompts, z, lengths, STOP, STOP, suffixes, chunk_size=4)
    torch.testing.assert_close(final, packed.gather(1, lengths[:, None]).squeeze(1), atol=1e-5, rtol=0)


def test_every_tested_attention_lm_takes_the_packed_layout():
    for arch in ARCHS:
        assert capability._packing_obstacle(tiny_model(arch, V)) is None, arch


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_peft_policy_with_adapter_disabled_scores_like_the_base_model(arch):
    """The default reward is the PEFT policy's base with the adapter off: equal to the plain base model's rewards,
    and different from the policy's own (adapter on)."""
    import copy

    from peft import LoraConfig, get_peft_model

    from gfn_trl.models import lora_target_modules
    from gfn_trl.rewards import LikelihoodReward

    base = tiny_model(arch, V, seed=18).eval()
    config = LoraConfig(r=4, lora_alpha=8, target_modules=lora_target_modules(base), fan_in_fan_out=arch == "gpt2",
                        init_lora_weights=False)  # random B: the adapter changes the logits
    policy = get_peft_model(copy.deepcopy(base), config).train()
    prompts, suffixes, z, lengths = _batch(seed=19, shared=True)
    rows = [{"reward_prompt_ids": p, "suffix_ids": s, "gfn_has_suffix": True} for p, s in zip(prompts, suffixes)]
    got = LikelihoodReward(policy, None, STOP, STOP)(rows, z, lengths)
    assert policy.training  # the reward pass restores the mode
    want = suffix_log_rewards_naive(base, prompts, z, lengths, suffixes, STOP)
    torch.testing.assert_close(got, want, atol=1e-4, rtol=0)
    adapted = prefix_log_rewards(policy.eval(), prompts, z, lengths, STOP, STOP, suffixes)  # adapter on
    torch.testing.assert_close(adapted, suffix_log_rewards_naive(policy, prompts, z, lengths, suffixes, STOP),
                               atol=1e-4, rtol=0)
    assert (adapted - got).abs().max() > 1e-2


@pytest.mark.parametrize("stop_reward", [False, True])
def test_final_only_equals_the_per_prefix_value_at_the_end(stop_reward):
    """`final_log_rewards` / `LikelihoodReward.final` (one suffix copy per row) = the per-prefix reward at k = n,
    contrast penalty included."""
    from gfn_trl.rewards import LikelihoodReward, final_log_rewards

    model = tiny_model("qwen2", V, seed=20).eval()
    prompts, suffixes, z, lengths = _batch(seed=21, B=7, shared=True)
    suffixes = None if stop_reward else suffixes
    full = prefix_log_rewards(model, prompts, z, lengths, STOP, STOP, suffixes)
    want = full.gather(1, lengths[:, None]).squeeze(1)
    torch.testing.assert_close(final_log_rewards(model, prompts, z, lengths, STOP, STOP, suffixes), want,
                               atol=1e-5, rtol=0)
    if not stop_reward:
        rows = [{"reward_prompt_ids": p, "suffix_ids": s, "gfn_has_suffix": True, "contrast_suffix_ids": [9, 8]}
                for p, s in zip(prompts, suffixes)]
        reward = LikelihoodReward(None, model, STOP, STOP)
        per_prefix = reward(rows, z, lengths)
        torch.testing.assert_close(reward.final(rows, z, lengths),
                                   per_prefix.gather(1, lengths[:, None]).squeeze(1), atol=1e-5, rtol=0)
