"""The static-cache decode loop (`sample_latents(cache_implementation="static")`, optionally compiled) draws the same
latents as the dynamic loop for the same row seeds: it changes the cache's layout, not the policy."""

import time

import pytest
import torch

from benchmarks.arch_sweep import STOP, V, build
from gfn_trl.sampling import (
    LatentConstraints,
    left_pad,
    sample_latents,
    sampler_options,
    static_cache_obstacle,
)
from gfn_trl.testing import exact_posterior_toy, tiny_model

# Attention with RoPE (Llama, Qwen2, GPT-J, GPT-NeoX, Phi-3), learned positions (GPT-2, OPT), ALiBi (Bloom, tiny
# Falcon-ALiBi), alternating sliding/global layers (Gemma-2) and a hybrid of convolutions and attention (LFM2)
ARCHS = ["gpt2", "opt", "llama", "qwen2", "gpt_neox", "phi3", "bloom", "falcon", "gemma2", "lfm2"]


def _sharp(model):
    model.eval()
    with torch.no_grad():  # sharper conditionals than the default init, so that rows differ
        for p in model.parameters():
            if p.ndim >= 2:
                p.normal_(0, 0.3)
    return model


def _batch(n_rows=18):
    g = torch.Generator().manual_seed(3)
    prompts = [torch.randint(1, V, (n,), generator=g).tolist() for n in (3, 9, 5, 1, 7, 2)] * (n_rows // 6)
    ids, mask = left_pad(prompts, STOP)
    return prompts, ids, mask, torch.arange(len(prompts)) * 101 + 7


def test_static_loop_draws_the_dynamic_loops_latents_on_every_kind_of_architecture():
    """Row-seeded latents of a left-padded batch, several temperatures: identical tokens and lengths."""
    _, ids, mask, seeds = _batch()
    c = LatentConstraints(STOP, max_length=6, min_length=1)
    models = [(t, build(t)) for t in ARCHS] + [(f"tiny {a}", tiny_model(a, V)) for a in ("falcon_alibi", "gptj")]
    for name, model in models:
        _sharp(model)
        for temperature in (1.0, 0.6, 1.7):
            z, lengths = sample_latents(model, ids, mask, c, temperature, STOP, seeds)
            z_s, l_s = sample_latents(model, ids, mask, c, temperature, STOP, seeds, cache_implementation="static")
            assert torch.equal(lengths, l_s) and torch.equal(z, z_s), (name, temperature)
        assert len(set(map(tuple, z.tolist()))) > 3, name  # not a degenerate model
        assert int(lengths.min()) >= 1, name


def test_static_loop_without_seeds_draws_from_the_global_rng_like_the_dynamic_loop():
    _, ids, mask, _ = _batch()
    model = _sharp(tiny_model("llama", V))
    c = LatentConstraints(STOP, max_length=6, min_length=2)
    torch.manual_seed(4)
    z, lengths = sample_latents(model, ids, mask, c, 1.5, STOP)
    torch.manual_seed(4)
    z_s, l_s = sample_latents(model, ids, mask, c, 1.5, STOP, cache_implementation="static")
    assert torch.equal(z, z_s) and torch.equal(lengths, l_s)


def test_static_loop_with_a_tool_and_a_vocabulary_mask():
    """The tool's forced tokens are host-side (the step is not fused then): still the dynamic loop's latents."""
    toy = exact_posterior_toy("suffix", tool=True)
    model, tok = toy["model"].eval(), toy["tokenizer"]
    c = LatentConstraints(tok.eos_token_id, toy["max_length"], toy["min_length"], toy["vocab_mask"], toy["tool"])
    prompt = tok(toy["dataset"][0]["prompt"])["input_ids"]
    ids, mask = left_pad([prompt] * 64, tok.pad_token_id)
    seeds = torch.arange(64) * 7919 + 13
    z, lengths = sample_latents(model, ids, mask, c, 2.0, tok.pad_token_id, seeds)
    z_s, l_s = sample_latents(model, ids, mask, c, 2.0, tok.pad_token_id, seeds, cache_implementation="static")
    assert torch.equal(z, z_s) and torch.equal(lengths, l_s)
    assert all(c.admits(z[b, : int(lengths[b])].tolist()) for b in range(64))
    c_id = tok.convert_tokens_to_ids("c")
    assert (z == c_id).any()  # the tool wrote something


@pytest.mark.slow  # inductor's compile of a tiny Llama: 15-80 s on the 2-core CI machine, depending on its load
def test_compiled_static_loop_draws_the_same_latents():
    """torch.compile of the fused decode step (inductor on the CPU): the same latents, compiled once for a batch
    shape and reused (a later call of the same shape, at another temperature, does not recompile)."""
    _, ids, mask, seeds = _batch(12)
    model = _sharp(tiny_model("llama", V))
    c = LatentConstraints(STOP, max_length=4, min_length=1)
    z, lengths = sample_latents(model, ids, mask, c, 1.0, STOP, seeds)
    z_c, l_c = sample_latents(model, ids, mask, c, 1.0, STOP, seeds, compile=True)
    assert torch.equal(z, z_c) and torch.equal(lengths, l_c)
    t0 = time.perf_counter()
    with sampler_options(compile=True):  # the context's settings reach calls that do not choose
        z_c, l_c = sample_latents(model, ids, mask, c, 0.7, STOP, seeds)
    assert time.perf_counter() - t0 < 5  # no second compile (the first took seconds)
    z, lengths = sample_latents(model, ids, mask, c, 0.7, STOP, seeds)
    assert torch.equal(z, z_c) and torch.equal(lengths, l_c)


def test_lms_without_an_exact_static_cache_are_refused_by_name():
    _, ids, mask, seeds = _batch(6)
    c = LatentConstraints(STOP, max_length=6)
    mamba = tiny_model("mamba", V).eval()
    assert "recurrent" in static_cache_obstacle(mamba, 20)
    with pytest.raises(ValueError, match="cache_implementation='static' cannot decode this LM exactly.*recurrent"):
        sample_latents(mamba, ids, mask, c, 1.0, STOP, seeds, cache_implementation="static")
    gpt_neo = tiny_model("gpt_neo", V).eval()  # a 4-token local window
    assert "window (4)" in static_cache_obstacle(gpt_neo, 20)
    assert static_cache_obstacle(gpt_neo, 4) is None
    assert static_cache_obstacle(tiny_model("llama", V), 20) is None


def test_sampler_options_resolution_and_errors():
    _, ids, mask, seeds = _batch(6)
    model = tiny_model("gpt2", V).eval()
    c = LatentConstraints(STOP, max_length=3)
    with pytest.raises(ValueError, match="cache_implementation must be one of"):
        sample_latents(model, ids, mask, c, 1.0, STOP, seeds, cache_implementation="paged")
    with pytest.raises(ValueError, match="compile=True needs fixed shapes"):
        sample_latents(model, ids, mask, c, 1.0, STOP, seeds, cache_implementation="dynamic", compile=True)
    with pytest.raises(ValueError, match="cache_implementation must be one of"):
        with sampler_options(cache_implementation="offloaded"):
            pass
    mamba = tiny_model("mamba", V).eval()
    with sampler_options(cache_implementation="static"):
        with pytest.raises(ValueError, match="recurrent"):  # the context reaches the call ...
            sample_latents(mamba, ids, mask, c, 1.0, STOP, seeds)
        z, _ = sample_latents(mamba, ids, mask, c, 1.0, STOP, seeds, cache_implementation="dynamic")  # ... unless
        assert z.shape[0] == 6
    sample_latents(mamba, ids, mask, c, 1.0, STOP, seeds)  # the context is gone


def test_the_sampling_benchmark_runs_and_its_methods_agree():
    """benchmarks/sampling.py on a tiny model: generate, the dynamic and the static loop (it asserts they draw the
    same latents before timing them)."""
    from benchmarks.sampling import main

    times = main(["--batch", "3", "--new", "4", "--hidden", "64", "--layers", "1", "--vocab", "64", "--repeats", "1",
                  "--methods", "generate,dynamic,static"])
    assert set(times) == {"HF generate", "decode loop, dynamic cache", "static cache, eager"}


def test_the_hbm_bound_of_gptj_shapes():
    """The bandwidth bound printed next to GPU timings: GPT-J-6B in bf16 reads 12.1 GB of weights per decode step,
    plus the KV cache of 64 rows of 40 + 13 positions on average (28 layers, keys and values of width 4096)."""
    import argparse

    from transformers import GPTJConfig, GPTJForCausalLM

    from benchmarks.sampling import hbm_bound_ms

    config = GPTJConfig(n_embd=4096, n_layer=28, n_head=16, rotary_dim=64, n_positions=2048, vocab_size=50400)
    with torch.device("meta"):
        model = GPTJForCausalLM(config).to(torch.bfloat16)
    a = argparse.Namespace(batch=64, prompt=40, new=26, dtype="bfloat16", hbm_tb_s=4.8)
    ms, weights_gb, kv_gb = hbm_bound_ms(model, a)
    assert abs(weights_gb - 12.10) < 0.01
    assert abs(kv_gb - 64 * 53 * 28 * 2 * 4096 * 2 / 1e9) < 1e-9
    assert abs(ms - (weights_gb + kv_gb) / 4.8) < 1e-9 and 2.8 < ms < 2.9
