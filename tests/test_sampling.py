"""The constrained policy: the sampler and the loss's teacher-forced pass use the same distribution."""

import importlib.util
from pathlib import Path

import pytest
import torch
from transformers import GenerationConfig, LogitsProcessor, LogitsProcessorList

from gfn_trl.evaluation.exact import exact_policy_log_probs, tv_and_kl
from gfn_trl.sampling import (
    LatentConstraints,
    gumbel_noise,
    left_pad,
    position_ids_from_mask,
    sample_latents,
)
from gfn_trl.testing import exact_posterior_toy, tiny_model

V, STOP = 30, 0
ROOT = Path(__file__).resolve().parents[1]


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


def test_every_sampled_token_is_the_gumbel_argmax_of_the_teacher_forced_constrained_policy():
    """Step by step, the sampler draws from the loss's policy: with row seeds, every token it wrote (and its stop)
    is argmax(constrained log q / T + Gumbel noise of (seed, step)), where log q comes from one teacher-forced pass
    over prompt + Z without a cache, and the constraints include a tool's forced tokens and a left-padded batch."""
    toy = exact_posterior_toy("stop", seed=0, tool=True)
    model, tok = toy["model"].eval(), toy["tokenizer"]
    c = LatentConstraints(tok.eos_token_id, toy["max_length"], toy["min_length"], toy["vocab_mask"], toy["tool"])
    ids, mask = left_pad([tok(p)["input_ids"] for p in ("x y x", "y", "x x y y x a b")] * 40, tok.pad_token_id)
    seeds = torch.arange(ids.shape[0]) * 104729 + 5
    for temperature in (1.0, 2.5):
        z, lengths = sample_latents(model, ids, mask, c, temperature, tok.pad_token_id, seeds)
        B, T = z.shape
        full = torch.cat([ids, z], 1)
        full_mask = torch.cat([mask, torch.ones_like(z)], 1)
        with torch.no_grad():
            logits = model(input_ids=full, attention_mask=full_mask,
                           position_ids=position_ids_from_mask(full_mask)).logits[:, ids.shape[1] - 1 :].float()
        scores = c.apply(logits, torch.arange(T + 1), c.forced(z)) / temperature  # (B, S, V)
        written = torch.cat([z, torch.full((B, 1), c.stop_token_id)], 1)  # z_1 .. z_T, then the stop
        for k in range(T + 1):
            rows = lengths >= k  # rows still writing at step k (row b writes its stop at step lengths[b])
            perturbed = scores[:, k] + gumbel_noise(seeds, k, scores.shape[-1]).float()
            assert torch.equal(perturbed.argmax(-1)[rows], written[rows, k]), (temperature, k)
        assert (lengths < T).any() and (lengths == T).any()  # both kinds of stop were exercised


def _reference_generate(model, ids, mask, c, temperature, seeds):
    """The sampler as it was, through HF `generate` (its own processor, a clean GenerationConfig): the reference
    that the decode loop must reproduce token for token on LMs without shipped generation settings."""

    class Processor(LogitsProcessor):
        def __call__(self, input_ids, scores):
            step = input_ids.shape[1] - ids.shape[1]
            scores = c.apply_decoding(scores, input_ids[:, ids.shape[1] :]) / temperature
            return scores + gumbel_noise(seeds, step, scores.shape[-1]).to(scores.dtype)

    config = GenerationConfig(do_sample=False, max_new_tokens=c.max_length + 1, eos_token_id=c.stop_token_id,
                              pad_token_id=c.stop_token_id)
    new = model.generate(input_ids=ids, attention_mask=mask, generation_config=config,
                         logits_processor=LogitsProcessorList([Processor()]))[:, ids.shape[1] :]
    lengths = (new == c.stop_token_id).long().argmax(1)
    z = new[:, : int(lengths.max())].clone()
    z[torch.arange(z.shape[1])[None] >= lengths[:, None]] = c.stop_token_id
    return z, lengths


def _sweep():
    spec = importlib.util.spec_from_file_location("arch_sweep", ROOT / "benchmarks" / "arch_sweep.py")
    sweep = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(sweep)
    return sweep


def test_decode_loop_equals_generate_and_unpadded_rows_on_every_architecture():
    """On the 32 architectures of benchmarks/arch_sweep.py (attention with RoPE, learned or ALiBi positions, local
    windows, recurrent and hybrid layers) and the test zoo's: row-seeded latents of a left-padded batch are those
    of HF `generate` with a clean config, and those of each row sampled alone without padding."""
    sweep = _sweep()
    g = torch.Generator().manual_seed(3)
    prompts = [torch.randint(1, sweep.V, (n,), generator=g).tolist() for n in (3, 9, 5, 1, 7, 2)] * 3
    ids, mask = left_pad(prompts, sweep.STOP)
    c = LatentConstraints(sweep.STOP, max_length=6, min_length=1)
    seeds = torch.arange(len(prompts)) * 101 + 7
    models = [(t, sweep.build(t)) for t in sweep.DEFAULT]
    models += [(f"tiny {a}", tiny_model(a, sweep.V)) for a in ("falcon_alibi", "gptj")]
    for name, model in models:
        model.eval()
        with torch.no_grad():  # sharper conditionals than the default init, so that rows differ
            for p in model.parameters():
                if p.ndim >= 2:
                    p.normal_(0, 0.3)
        z, lengths = sample_latents(model, ids, mask, c, 1.0, sweep.STOP, seeds)
        z_ref, l_ref = _reference_generate(model, ids, mask, c, 1.0, seeds)
        assert torch.equal(lengths, l_ref) and torch.equal(z, z_ref), name
        for b in range(6):
            one = torch.tensor([prompts[b]])
            z1, l1 = sample_latents(model, one, torch.ones_like(one), c, 1.0, sweep.STOP, seeds[b : b + 1])
            assert z1[0, : int(l1[0])].tolist() == z[b, : int(lengths[b])].tolist(), (name, b)
        assert len(set(map(tuple, z.tolist()))) > 3, name  # not a degenerate model


def test_decode_loop_without_seeds_draws_from_the_global_rng_like_generate():
    """Without row seeds the loop draws with torch.multinomial from the global RNG, as `generate` sampled: the same
    RNG state gives generate's latents (a clean GenerationConfig, no top-k), and another state other latents."""
    model = tiny_model("llama", V, seed=0, init_std=0.3).eval()
    c = LatentConstraints(STOP, max_length=6, min_length=2)
    ids, mask = left_pad([[1, 2, 3], [4, 5], [6, 7, 8, 9]] * 8, STOP)

    class Processor(LogitsProcessor):
        def __call__(self, input_ids, scores):
            return c.apply_decoding(scores, input_ids[:, ids.shape[1] :]) / 1.5

    config = GenerationConfig(do_sample=True, top_k=0, max_new_tokens=7, eos_token_id=STOP, pad_token_id=STOP)
    torch.manual_seed(4)
    ref = model.generate(input_ids=ids, attention_mask=mask, generation_config=config,
                         logits_processor=LogitsProcessorList([Processor()]))[:, ids.shape[1] :]
    torch.manual_seed(4)
    z, lengths = sample_latents(model, ids, mask, c, 1.5, STOP)
    for b in range(ids.shape[0]):
        assert z[b, : int(lengths[b])].tolist() == ref[b, : int(lengths[b])].tolist() and ref[b, lengths[b]] == STOP
    torch.manual_seed(5)
    assert not torch.equal(sample_latents(model, ids, mask, c, 1.5, STOP)[0], z)


def test_empty_batch():
    model = tiny_model("gpt2", V)
    z, lengths = sample_latents(model, torch.zeros(0, 3, dtype=torch.long), torch.zeros(0, 3, dtype=torch.long),
                                LatentConstraints(STOP, 4), 1.0, STOP, torch.zeros(0))
    assert z.shape[0] == 0 and lengths.shape == (0,)


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


@pytest.mark.parametrize("cache_implementation", ["dynamic", "static"])
def test_counter_based_sampling_is_exact_and_reproducible(cache_implementation):
    """Gumbel-max with per-row seeds samples q exactly, and a row's latent depends only on its seed, with either
    decode loop (the static-cache one too: 4000 draws within sampling noise of the exact q over 84 latents)."""
    toy = exact_posterior_toy("stop", seed=0)
    model, tok = toy["model"].eval(), toy["tokenizer"]
    c = LatentConstraints(tok.eos_token_id, toy["max_length"], toy["min_length"], toy["vocab_mask"])
    prompt = tok(toy["dataset"][0]["prompt"])["input_ids"]
    log_q = exact_policy_log_probs(model, prompt, toy["latents"], c, tok.pad_token_id)
    ids, mask = left_pad([prompt] * 4000, tok.pad_token_id)
    seeds = torch.arange(4000) * 7919 + 13
    z, lengths = sample_latents(model, ids, mask, c, 1.0, tok.pad_token_id, seeds,
                                cache_implementation=cache_implementation)
    index = {tuple(l): i for i, l in enumerate(toy["latents"])}
    counts = torch.zeros(len(index))
    for b in range(z.shape[0]):
        counts[index[tuple(z[b, : int(lengths[b])].tolist())]] += 1
    assert tv_and_kl(log_q, counts.log())[0] < 0.06
    # the same seeds in another batch layout give the same latents
    z2, l2 = sample_latents(model, ids[100:103], mask[100:103], c, 1.0, tok.pad_token_id, seeds[100:103].flip(0),
                            cache_implementation=cache_implementation)
    for a, b in zip(range(3), (102, 101, 100)):
        assert l2[a] == lengths[b] and z2[a, : int(l2[a])].tolist() == z[b, : int(lengths[b])].tolist()
