"""The constrained policy: the sampler and the loss's teacher-forced pass use the same distribution."""

import torch
from transformers import GenerationConfig, LogitsProcessorList

from gfn_trl.exact import exact_policy_log_probs, tv_and_kl
from gfn_trl.sampling import LatentConstraints, _ConstrainedSampler, left_pad, policy_log_probs, sample_latents
from gfn_trl.testing import exact_posterior_toy, tiny_model

V, STOP = 30, 0


def test_constraints_mask_stop_and_vocabulary():
    allowed = torch.zeros(V, dtype=torch.bool)
    allowed[[3, 4, 5]] = True
    c = LatentConstraints(STOP, max_length=4, min_length=2, allowed=allowed)
    logits = torch.zeros(5, V)
    out = c.apply(logits, torch.arange(5))
    finite = torch.isfinite(out)
    assert not finite[0, STOP] and not finite[1, STOP]  # too short to stop
    assert finite[2, STOP] and finite[3, STOP]
    assert finite[4].nonzero().flatten().tolist() == [STOP]  # forced stop at max length
    assert finite[:4, 6:].sum() == 0 and finite[:4, 1:3].sum() == 0  # banned tokens never allowed
    assert finite[2, [3, 4, 5]].all()


def test_invalid_lengths_raise():
    import pytest

    with pytest.raises(ValueError, match="min_completion_length"):
        LatentConstraints(STOP, max_length=3, min_length=4)
    with pytest.raises(ValueError, match="max_completion_length"):
        LatentConstraints(STOP, max_length=0)


def test_sampler_respects_constraints():
    torch.manual_seed(0)
    model = tiny_model("llama", V, seed=0).eval()
    allowed = torch.zeros(V, dtype=torch.bool)
    allowed[10:20] = True
    c = LatentConstraints(STOP, max_length=5, min_length=2, allowed=allowed)
    ids, mask = left_pad([[1, 2, 3], [4, 5]] * 16, STOP)
    for temperature in (0.5, 1.0, 3.0):
        z, lengths = sample_latents(model, ids, mask, c, temperature, STOP)
        assert lengths.min() >= 2 and lengths.max() <= 5
        for b in range(z.shape[0]):
            n = int(lengths[b])
            assert all(10 <= t < 20 for t in z[b, :n].tolist())
            assert (z[b, n:] == STOP).all()


def test_sampler_step_distributions_equal_teacher_forced_log_probs():
    """At temperature 1 the distribution the sampler draws from at every step equals the loss's log q."""
    torch.manual_seed(1)
    model = tiny_model("gpt2", V, seed=1, init_std=0.3).eval()
    c = LatentConstraints(STOP, max_length=4, min_length=1)
    ids, mask = left_pad([[1, 2, 3], [4, 5], [6]] * 4, STOP)
    config = GenerationConfig(do_sample=True, top_k=0, top_p=1.0, temperature=1.0, max_new_tokens=5,
                              eos_token_id=STOP, pad_token_id=STOP)
    out = model.generate(input_ids=ids, attention_mask=mask, generation_config=config, output_scores=True,
                         return_dict_in_generate=True,
                         logits_processor=LogitsProcessorList([_ConstrainedSampler(c, ids.shape[1], 1.0)]))
    new = out.sequences[:, ids.shape[1]:]
    lengths = (new == STOP).long().argmax(1)
    T = int(lengths.max())
    z = new[:, :T].clone()
    log_pf, log_pterm = policy_log_probs(model, ids, mask, z, lengths, c)
    for b in range(z.shape[0]):
        for i in range(int(lengths[b]) + 1):
            step_logp = torch.log_softmax(out.scores[i][b].float(), -1)
            assert abs(step_logp[STOP].item() - log_pterm[b, i].item()) < 1e-4 or (
                step_logp[STOP] == log_pterm[b, i] == float("-inf"))
            if i < int(lengths[b]):
                assert abs(step_logp[z[b, i]].item() - log_pf[b, i].item()) < 1e-4
    assert (log_pterm[torch.arange(len(lengths)), torch.full_like(lengths, 4)][lengths == 4] == 0).all()


def test_constrained_policy_is_normalised_and_matches_empirical_samples():
    """Σ_Z q(Z⊤) = 1 over the enumerated support, and sampling frequencies agree with q."""
    toy = exact_posterior_toy("stop", seed=0)
    model, tok = toy["model"].eval(), toy["tokenizer"]
    c = LatentConstraints(tok.eos_token_id, toy["max_length"], toy["min_length"], toy["vocab_mask"])
    prompt = tok(toy["dataset"][0]["prompt"])["input_ids"]
    log_q = exact_policy_log_probs(model, prompt, toy["latents"], c, tok.pad_token_id)
    assert abs(log_q.exp().sum().item() - 1) < 1e-5
    torch.manual_seed(0)
    ids, mask = left_pad([prompt] * 4000, tok.pad_token_id)
    z, lengths = sample_latents(model, ids, mask, c, 1.0, tok.pad_token_id)
    index = {tuple(l): i for i, l in enumerate(toy["latents"])}
    counts = torch.zeros(len(index))
    for b in range(z.shape[0]):
        counts[index[tuple(z[b, : int(lengths[b])].tolist())]] += 1
    tv, _ = tv_and_kl(log_q, counts.log())
    assert tv < 0.06  # sampling noise with 4000 draws over 84 latents is about 0.03


def test_counter_based_sampling_is_exact_and_reproducible():
    """Gumbel-max with per-row seeds samples q exactly, and a row's latent depends only on its seed."""
    toy = exact_posterior_toy("stop", seed=0)
    model, tok = toy["model"].eval(), toy["tokenizer"]
    c = LatentConstraints(tok.eos_token_id, toy["max_length"], toy["min_length"], toy["vocab_mask"])
    prompt = tok(toy["dataset"][0]["prompt"])["input_ids"]
    log_q = exact_policy_log_probs(model, prompt, toy["latents"], c, tok.pad_token_id)
    ids, mask = left_pad([prompt] * 4000, tok.pad_token_id)
    seeds = torch.arange(4000) * 7919 + 13
    z, lengths = sample_latents(model, ids, mask, c, 1.0, tok.pad_token_id, seeds)
    index = {tuple(l): i for i, l in enumerate(toy["latents"])}
    counts = torch.zeros(len(index))
    for b in range(z.shape[0]):
        counts[index[tuple(z[b, : int(lengths[b])].tolist())]] += 1
    assert tv_and_kl(log_q, counts.log())[0] < 0.06
    # the same seeds in another batch layout give the same latents
    z2, l2 = sample_latents(model, ids[100:103], mask[100:103], c, 1.0, tok.pad_token_id, seeds[100:103].flip(0))
    for a, b in zip(range(3), (102, 101, 100)):
        assert l2[a] == lengths[b] and z2[a, : int(l2[a])].tolist() == z[b, : int(lengths[b])].tolist()
