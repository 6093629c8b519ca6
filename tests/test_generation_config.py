"""Whatever `generation_config.json` a checkpoint ships, the sampler is exactly the constrained policy, and the
decoding baselines apply only the processors they ask for.

transformers' `generate` fills every field its caller leaves unset from `model.generation_config`, and instruct
checkpoints ship repetition penalties, n-gram bans, suppressed tokens, cutoffs, ...: under `generate` those would
reshape what is sampled (on the exact-posterior toy, repetition_penalty=1.3 moved the samples TV 0.12 away from q).
"""

import json
import math

import pytest
import torch
from transformers import AutoModelForCausalLM, WatermarkingConfig

from gfn_trl.evaluation.decoding import decode
from gfn_trl.evaluation.exact import exact_policy_log_probs, tv_and_kl
from gfn_trl.sampling import LatentConstraints, clean_generate, left_pad, sample_latents
from gfn_trl.testing import exact_posterior_toy, tiny_model

V, STOP, PAD = 30, 1, 0  # a stop that is not token 0 (argmax over all -inf scores would pick 0)

# Every GenerationConfig field (transformers 5.2x) that makes `generate` add a logits processor or warper, change
# the decoding mode, the stopping rule or the output, with a value that would change what a tiny LM samples.
SHIPPED = {
    # logits processors that run even without sampling
    "repetition_penalty": 1.5,
    "encoder_repetition_penalty": 1.5,  # encoder-decoder only: generate ignores it for a causal LM
    "no_repeat_ngram_size": 1,
    "encoder_no_repeat_ngram_size": 1,  # encoder-decoder only
    "bad_words_ids": [[t] for t in range(2, 16)],
    "sequence_bias": [[[t], 4.0] for t in range(16, 20)],
    "suppress_tokens": list(range(2, 16)),
    "begin_suppress_tokens": list(range(2, 16)),
    "min_length": 12,  # overridden by the old sampler's own min_new_tokens=0
    "min_new_tokens": 6,
    "forced_bos_token_id": 5,  # forces a token only at sequence length 1
    "forced_eos_token_id": 5,  # at generate's last step: 5 instead of the stop
    "exponential_decay_length_penalty": (1, 3.0),
    "guidance_scale": 3.0,
    "watermarking_config": WatermarkingConfig(bias=4.0, greenlist_ratio=0.25),
    "renormalize_logits": True,
    "remove_invalid_values": True,
    # sampling mode and warpers (the old sampler set do_sample, temperature, top_k and top_p itself)
    "do_sample": True,
    "temperature": 0.3,
    "top_k": 3,
    "top_p": 0.3,
    "min_p": 0.3,
    "typical_p": 0.3,
    "epsilon_cutoff": 0.1,
    "eta_cutoff": 0.1,
    "top_h": 0.3,
    # decoding mode, stopping and output
    "num_beams": 2,
    "num_return_sequences": 2,
    "max_length": 4,
    "max_time": 1e-9,
    "stop_strings": ["x"],
    "token_healing": True,
    "return_dict_in_generate": True,
    "prompt_lookup_num_tokens": 2,
}


def _model(**shipped):
    model = tiny_model("llama", V, seed=0, init_std=0.3).eval()
    for field, value in shipped.items():
        setattr(model.generation_config, field, value)  # as `from_pretrained` leaves a checkpoint's settings
    return model


def _batch():
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(2, V, (n,), generator=g).tolist() for n in (6, 3, 9, 4)] * 8  # left padding
    ids, mask = left_pad(prompts, PAD)
    return ids, mask, torch.arange(len(prompts)) * 7919 + 11


CONSTRAINTS = LatentConstraints(STOP, max_length=8, min_length=2)


def _draw(model, seeded: bool):
    ids, mask, seeds = _batch()
    torch.manual_seed(0)  # the unseeded path draws from the global RNG
    return sample_latents(model, ids, mask, CONSTRAINTS, 1.0, PAD, seeds if seeded else None)


_CLEAN = {}


def _clean(seeded: bool):
    if seeded not in _CLEAN:
        _CLEAN[seeded] = _draw(_model(), seeded)
    return _CLEAN[seeded]


@pytest.mark.parametrize("seeded", [True, False], ids=["row_seeds", "global_rng"])
@pytest.mark.parametrize("field", sorted(SHIPPED))
def test_sampler_ignores_each_shipped_generation_setting(field, seeded):
    z, lengths = _draw(_model(**{field: SHIPPED[field]}), seeded)
    z0, l0 = _clean(seeded)
    assert torch.equal(lengths, l0) and torch.equal(z, z0), field
    assert lengths.min() >= CONSTRAINTS.min_length and lengths.max() <= CONSTRAINTS.max_length


def test_sampler_ignores_a_checkpoints_generation_config_json(tmp_path):
    """A saved checkpoint whose generation_config.json holds an instruct model's settings, loaded as users do."""
    _model().save_pretrained(tmp_path)
    shipped = {"repetition_penalty": 1.3, "no_repeat_ngram_size": 2, "bad_words_ids": [[3], [4, 5]],
               "suppress_tokens": [6, 7], "begin_suppress_tokens": [8], "min_new_tokens": 4,
               "sequence_bias": [[[9], 3.0]], "forced_eos_token_id": 5, "exponential_decay_length_penalty": [2, 1.5],
               "do_sample": True, "temperature": 0.6, "top_k": 20, "top_p": 0.9, "typical_p": 0.9, "min_p": 0.05,
               "eos_token_id": [0, 5], "pad_token_id": 1, "bos_token_id": 1}
    config = json.loads((tmp_path / "generation_config.json").read_text())
    (tmp_path / "generation_config.json").write_text(json.dumps({**config, **shipped}))
    model = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert model.generation_config.repetition_penalty == 1.3 and model.generation_config.no_repeat_ngram_size == 2
    for seeded in (True, False):
        z, lengths = _draw(model, seeded)
        z0, l0 = _clean(seeded)
        assert torch.equal(lengths, l0) and torch.equal(z, z0)


def test_sampler_is_the_exact_constrained_policy_under_shipped_penalties():
    """With repetition_penalty=1.3 and no_repeat_ngram_size=2 shipped, N seeded samples on the exact-posterior toy
    are within sampling noise of the q that `policy_log_probs` defines, and respect min_completion_length.

    The bound: for N draws from q the expected TV of the empirical distribution is about
    E = ½ Σ_Z sqrt(2 q(Z)(1 - q(Z)) / (π N)) (each count ~ normal, E|X| = σ sqrt(2/π)), 0.030 here; its standard
    deviation is far smaller (a sum of 80 weakly dependent terms), so TV < 1.5 E fails only for a sampler that is
    not q.  The generate-based sampler was at TV 0.24 ≈ 8 E here (0.12 with the penalty alone); this one is at
    0.033.  The seeds are fixed, so the test is deterministic."""
    toy = exact_posterior_toy("stop", seed=0, min_length=2)
    model, tok = toy["model"].eval(), toy["tokenizer"]
    c = LatentConstraints(tok.eos_token_id, toy["max_length"], toy["min_length"], toy["vocab_mask"])
    prompt = tok(toy["dataset"][0]["prompt"])["input_ids"]
    log_q = exact_policy_log_probs(model, prompt, toy["latents"], c, tok.pad_token_id)  # before shipping anything
    model.generation_config.repetition_penalty = 1.3
    model.generation_config.no_repeat_ngram_size = 2
    N = 4000
    ids, mask = left_pad([prompt] * N, tok.pad_token_id)
    z, lengths = sample_latents(model, ids, mask, c, 1.0, tok.pad_token_id, torch.arange(N) * 7919 + 13)
    assert lengths.min() >= toy["min_length"]
    index = {tuple(latent): i for i, latent in enumerate(toy["latents"])}
    counts = torch.zeros(len(index))
    for b in range(N):
        counts[index[tuple(z[b, : int(lengths[b])].tolist())]] += 1
    q = log_q.exp()
    expected_tv = 0.5 * (2 * q * (1 - q) / (math.pi * N)).sqrt().sum().item()  # ≈ 0.03 here
    tv, _ = tv_and_kl(log_q, counts.log())
    assert tv < 1.5 * expected_tv, (tv, expected_tv)


# ---------------------------------------------------------------------------------------------------------------------
# Decoding baselines: `generate` with the processors they ask for and none of the checkpoint's


def _decode_toy(method: str, **shipped):
    toy = exact_posterior_toy("stop", seed=0, min_length=1)
    model, tok = toy["model"].eval(), toy["tokenizer"]
    for field, value in shipped.items():
        setattr(model.generation_config, field, value)
    c = LatentConstraints(tok.eos_token_id, toy["max_length"], toy["min_length"], toy["vocab_mask"])
    prompts = [tok(p)["input_ids"] for p in ("x y x", "y", "x x y y x")]
    return decode(model, tok, prompts, method, 4, c, temperature=2.0, top_p=0.9, seed=3, batch_size=2)


TOY_SHIPPED = {"repetition_penalty": 1.3, "no_repeat_ngram_size": 1, "suppress_tokens": [2, 3],
               "bad_words_ids": [[4]], "min_new_tokens": 3, "exponential_decay_length_penalty": (1, 3.0),
               "sequence_bias": [[[5], 5.0]], "top_k": 1, "top_p": 0.2, "temperature": 0.2, "typical_p": 0.2,
               "num_beams": 2, "diversity_penalty": 5.0, "max_length": 3, "return_dict_in_generate": True}
_DECODED = {}


@pytest.mark.parametrize("method", ["greedy", "nucleus", "sample", "tempered", "beam", "diverse_beam"])
def test_decoding_baselines_ignore_shipped_settings(method):
    clean = _decode_toy(method)
    assert _decode_toy(method, repetition_penalty=1.3) == clean  # the case
    assert _decode_toy(method, **TOY_SHIPPED) == clean  # and everything at once
    if method == "nucleus":  # the setting nucleus asks for is applied: p = 0.9 and p → 0 (greedy) differ
        toy = exact_posterior_toy("stop", seed=0, min_length=1)
        tok = toy["tokenizer"]
        c = LatentConstraints(tok.eos_token_id, toy["max_length"], 1, toy["vocab_mask"])
        prompts = [tok(p)["input_ids"] for p in ("x y x", "y", "x x y y x")]
        narrow = decode(toy["model"].eval(), tok, prompts, "nucleus", 4, c, top_p=1e-6, seed=3, batch_size=2)
        assert narrow != clean and narrow == decode(toy["model"], tok, prompts, "greedy", 4, c)


@pytest.mark.parametrize("field", sorted(SHIPPED))
def test_clean_generate_ignores_each_shipped_setting(field):
    """`clean_generate` (the decoders' `generate`) applies what its caller asks for and nothing a checkpoint set,
    and puts the model's own generation config back."""
    ids, mask, _ = _batch()
    kw = dict(max_new_tokens=6, eos_token_id=STOP, pad_token_id=PAD)
    want = clean_generate(_model(), ids, mask, **kw)
    model = _model(**{field: SHIPPED[field]})
    assert torch.equal(clean_generate(model, ids, mask, **kw), want), field
    assert getattr(model.generation_config, field) == SHIPPED[field]
