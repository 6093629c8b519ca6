"""The non-GFlowNet baselines: same reward, same latent space, real TRL trainers on real tiny models."""

import os
import tempfile

import pytest
import torch
from datasets import Dataset
from peft import LoraConfig, get_peft_model

os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")

from gfn_trl.baselines import (  # noqa: E402
    LatentLogReward,
    build_grpo_trainer,
    build_rloo_trainer,
    build_sft_trainer,
    constrained_generation_kwargs,
    latent_constraints,
    resolve_peft_config,
    sft_dataset,
)
from gfn_trl.data import tokenize_dataset  # noqa: E402
from gfn_trl.evaluation.decoding import DECODING_METHODS, beam_search, decode  # noqa: E402
from gfn_trl.evaluation.exact import exact_log_rewards, exact_policy_log_probs  # noqa: E402
from gfn_trl.rewards import LikelihoodReward  # noqa: E402
from gfn_trl.sampling import right_pad  # noqa: E402
from gfn_trl.testing import exact_posterior_toy, tiny_model, tiny_tokenizer  # noqa: E402


def _toy(reward="suffix", min_length=1):
    toy = exact_posterior_toy(reward, min_length=min_length)
    toy["constraints"] = latent_constraints(
        toy["tokenizer"], toy["max_length"], toy["min_length"], vocab_mask=toy["vocab_mask"]
    )
    return toy


def _common(steps):
    return {
        "output_dir": tempfile.mkdtemp(),
        "max_steps": steps,
        "learning_rate": 2e-3,
        "logging_steps": 1,
        "save_strategy": "no",
        "report_to": "none",
        "use_cpu": True,
        "bf16": False,
        "disable_tqdm": True,
        "seed": 0,
    }


# ------------------------------------------------------------------------------------------------- the reward


@pytest.mark.parametrize("reward", ["suffix", "stop"])
def test_reward_callable_equals_likelihood_reward_final_state(reward):
    toy = _toy(reward)
    tok, model, c = toy["tokenizer"], toy["model"].eval(), toy["constraints"]
    rows = tokenize_dataset(toy["dataset"], tok, model.config, c.max_length)
    a, b, d = tok.convert_tokens_to_ids(["a", "b", "d"])
    stop = c.stop_token_id
    # as TRL passes them: cut after the first EOS (sometimes with trailing padding), one forced-stop completion
    completion_ids = [[a, stop], [b, d, a, stop], [d, stop, stop], [a, b, d, a]]
    latents = [[a], [b, d, a], [d], [a, b, d]]  # the last one: no stop, cut at max_length (the forced stop)
    columns = {k: [rows[0][k]] * len(completion_ids) for k in rows.column_names}
    fn = LatentLogReward(model, c, tok.pad_token_id)
    got = fn(prompts=[rows[0]["prompt"]] * 4, completions=["?"] * 4, completion_ids=completion_ids, **columns)
    assert isinstance(got, list) and all(isinstance(x, float) for x in got)

    # the GFlowNet's reward path, final state
    z, lengths = right_pad(latents, stop)
    ref = LikelihoodReward(None, model, stop, tok.pad_token_id)([rows[0]] * 4, z, lengths)
    want = ref.gather(1, lengths[:, None]).squeeze(1)
    torch.testing.assert_close(torch.tensor(got), want, atol=1e-5, rtol=1e-5)
    # and the exact enumeration's value of the same latents
    suffix = rows[0]["suffix_ids"] if reward == "suffix" else None
    exact = exact_log_rewards(model, rows[0]["reward_prompt_ids"], latents, stop, tok.pad_token_id, suffix)
    torch.testing.assert_close(torch.tensor(got), exact, atol=1e-5, rtol=1e-5)


def test_reward_of_a_peft_policy_is_its_adapter_disabled_base():
    toy = _toy()
    tok, c = toy["tokenizer"], toy["constraints"]
    frozen = exact_posterior_toy("suffix")["model"].eval()  # same seed: the same weights
    policy = get_peft_model(toy["model"], resolve_peft_config(toy["model"], LoraConfig(r=4, init_lora_weights=False)))
    rows = tokenize_dataset(toy["dataset"], tok, frozen.config, c.max_length)
    columns = {k: [rows[0][k]] * 3 for k in rows.column_names}
    ids = [[4, 0], [5, 6, 0], [7, 7, 7, 0]]
    via_policy = LatentLogReward(None, c, tok.pad_token_id).use(policy, disable_adapter=True)(
        prompts=[""] * 3, completions=[""] * 3, completion_ids=ids, **columns
    )
    via_frozen = LatentLogReward(frozen, c, tok.pad_token_id)(
        prompts=[""] * 3, completions=[""] * 3, completion_ids=ids, **columns
    )
    torch.testing.assert_close(torch.tensor(via_policy), torch.tensor(via_frozen), atol=1e-5, rtol=1e-5)


def test_reward_without_tokenized_columns_says_how_to_fix():
    toy = _toy()
    fn = LatentLogReward(toy["model"], toy["constraints"], 0)
    with pytest.raises(KeyError, match="tokenize_dataset"):
        fn(prompts=["x"], completions=["a"], completion_ids=[[4, 0]])


# ------------------------------------------------------------------------------------------------- GRPO and RLOO


def test_generation_kwargs_suppress_every_banned_token_but_the_stop():
    tok = tiny_tokenizer()
    allowed = torch.zeros(len(tok), dtype=torch.bool)
    allowed[tok.convert_tokens_to_ids(["cat", "dog", "sat"])] = True
    c = latent_constraints(tok, 5, 2, stop_token=".", vocab_mask=allowed)
    kw = constrained_generation_kwargs(c, len(tok) + 3, [tok.eos_token_id])  # a vocabulary padded past the tokenizer's
    stop = tok.convert_tokens_to_ids(".")
    assert kw["forced_eos_token_id"] == stop and kw["min_new_tokens"] == 2
    suppressed = set(kw["suppress_tokens"])
    assert stop not in suppressed and tok.eos_token_id in suppressed  # TRL would end completions at <eos>
    assert suppressed == set(range(len(tok) + 3)) - set(tok.convert_tokens_to_ids(["cat", "dog", "sat", "."]))


class _Recorder:
    """Delegates to the trainer's reward function and keeps the completion ids TRL passed it."""

    def __init__(self, fn):
        self.fn, self.seen, self.__name__ = fn, [], fn.__name__

    def __call__(self, **kw):
        self.seen += kw["completion_ids"]
        return self.fn(**kw)


def _check_completions(seen, c, allowed_ids):
    assert seen
    for ids in seen:
        assert ids[-1] == c.stop_token_id and c.stop_token_id not in ids[:-1], ids  # exactly one stop, at the end
        latent = ids[:-1]
        assert c.min_length <= len(latent) <= c.max_length, ids
        assert set(latent) <= allowed_ids, ids


@pytest.mark.parametrize("kind", ["grpo", "rloo"])
def test_online_rl_completions_respect_the_constraints_and_train(kind):
    from trl import GRPOConfig, RLOOConfig

    # a tighter latent space than the toy's: {b, c} only, 2..3 tokens
    toy = exact_posterior_toy("suffix")
    tok, model = toy["tokenizer"], toy["model"]
    allowed = torch.zeros(len(tok), dtype=torch.bool)
    allowed[tok.convert_tokens_to_ids(["b", "c"])] = True
    c = latent_constraints(tok, 3, 2, vocab_mask=allowed)
    with torch.no_grad():  # unconstrained, the LM would often leave the space at the first step
        logits = model(**tok(toy["dataset"][0]["prompt"], return_tensors="pt")).logits[0, -1]
        assert torch.softmax(logits, -1)[~allowed].sum() > 0.9
    config_cls = GRPOConfig if kind == "grpo" else RLOOConfig
    args = config_cls(
        per_device_train_batch_size=8,
        num_generations=8,
        activation_checkpointing=False,
        disable_dropout=True,
        **_common(2),
    )
    # settings a checkpoint ships in generation_config.json must not reach TRL's sampler: they would ban "c" and
    # every repeated token (3-token latents over {b, c} always repeat one)
    b_id, c_id = tok.convert_tokens_to_ids(["b", "c"])
    model.generation_config.bad_words_ids = [[c_id]]
    model.generation_config.no_repeat_ngram_size = 1
    builder = build_grpo_trainer if kind == "grpo" else build_rloo_trainer
    trainer = builder(model, args, toy["dataset"], c, processing_class=tok, peft_config=LoraConfig(r=4))
    assert args.max_completion_length == 4
    recorder = _Recorder(trainer.reward_funcs[0])
    trainer.reward_funcs[0] = recorder
    lora_before = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if "lora_B" in n}
    trainer.train()
    assert len(recorder.seen) == 16
    _check_completions(recorder.seen, c, set(tok.convert_tokens_to_ids(["b", "c"])))
    written = [list(ids) for ids in recorder.seen]
    assert any(c_id in ids for ids in written), written  # the shipped bad_words_ids did not apply
    assert any(len(set(ids) - {c.stop_token_id}) < len([t for t in ids if t != c.stop_token_id]) for ids in written)
    logs = [h for h in trainer.state.log_history if "loss" in h]
    assert len(logs) == 2 and all(torch.isfinite(torch.tensor(h["loss"])) for h in logs)
    assert all(h["reward"] < 0 for h in logs)  # log-likelihoods
    assert any(not torch.equal(p, lora_before[n]) for n, p in trainer.model.named_parameters() if n in lora_before)
    # the reward stays the frozen base after the policy moved
    frozen = exact_posterior_toy("suffix")["model"].eval()
    rows = tokenize_dataset(toy["dataset"], tok, frozen.config, 3)
    cols = {k: [rows[0][k]] * 2 for k in rows.column_names}
    ids = [[4, 5, 0], [5, 5, 4, 0]]
    got = trainer.latent_reward(prompts=[""] * 2, completions=[""] * 2, completion_ids=ids, **cols)
    want = LatentLogReward(frozen, c, 0)(prompts=[""] * 2, completions=[""] * 2, completion_ids=ids, **cols)
    torch.testing.assert_close(torch.tensor(got), torch.tensor(want), atol=1e-5, rtol=1e-5)


def test_grpo_with_a_separate_reward_model_and_stop_token_other_than_eos():
    from trl import GRPOConfig

    tok = tiny_tokenizer()
    model, reward_model = (
        tiny_model("gpt2", len(tok), seed=1, init_std=0.3),
        tiny_model("gpt2", len(tok), seed=1, init_std=0.3),
    )
    allowed = torch.ones(len(tok), dtype=torch.bool)
    allowed[tok.convert_tokens_to_ids(["<eos>", "<unk>", "the"])] = False
    c = latent_constraints(tok, 4, 1, stop_token=".", vocab_mask=allowed)
    args = GRPOConfig(
        per_device_train_batch_size=4,
        num_generations=4,
        activation_checkpointing=False,
        disable_dropout=True,
        **_common(1),
    )
    data = Dataset.from_dict({"prompt": ["the cat sat", "a dog ran"]})
    trainer = build_grpo_trainer(
        model, args, data, c, processing_class=tok, peft_config=LoraConfig(r=4), reward_model=reward_model
    )
    recorder = _Recorder(trainer.reward_funcs[0])
    trainer.reward_funcs[0] = recorder
    trainer.train()
    _check_completions(recorder.seen, c, set(allowed.nonzero().flatten().tolist()) - {c.stop_token_id})


# ------------------------------------------------------------------------------------------------- SFT


def test_sft_on_gold_latents_raises_their_likelihood():
    from trl import SFTConfig

    toy = _toy()
    tok, c = toy["tokenizer"], toy["constraints"]
    prompt = toy["dataset"][0]["prompt"]
    prompt_ids = tok(prompt)["input_ids"]
    gold_ids = tok.convert_tokens_to_ids(["c", "a", "d"])
    before = exact_policy_log_probs(toy["model"].eval(), prompt_ids, [gold_ids], c, 0).item()
    data = Dataset.from_dict({"prompt": [prompt] * 8, "completion": ["c a d"] * 8})
    # the gold latent may be text or token ids, and may already end with the stop: the same rows
    as_ids = Dataset.from_dict({"prompt": [prompt] * 2, "completion": [gold_ids, gold_ids + [c.stop_token_id]]})
    assert (
        sft_dataset(as_ids, tok, c.stop_token_id)["input_ids"]
        == sft_dataset(data, tok, c.stop_token_id)["input_ids"][:2]
    )
    args = SFTConfig(per_device_train_batch_size=8, **_common(15))
    trainer = build_sft_trainer(
        toy["model"], args, data, c.stop_token_id, processing_class=tok, peft_config=LoraConfig(r=8, lora_alpha=16)
    )
    row = trainer.train_dataset[0]
    assert row["input_ids"] == prompt_ids + gold_ids + [c.stop_token_id]
    assert row["labels"] == [-100] * len(prompt_ids) + gold_ids + [c.stop_token_id]  # loss on Z and the stop only
    trainer.train()
    policy = trainer.accelerator.unwrap_model(trainer.model).eval()
    after = exact_policy_log_probs(policy, prompt_ids, [gold_ids], c, 0).item()
    assert after > before + 2.0, (before, after)


# ------------------------------------------------------------------------------------------------- decoding


@pytest.fixture(scope="module")
def continuation():
    """A continuation-like setting: stop ".", banned words, 2..5 tokens, two prompts of different lengths."""
    tok = tiny_tokenizer()
    model = tiny_model("gpt2", len(tok), seed=3, init_std=0.3).eval()
    allowed = torch.ones(len(tok), dtype=torch.bool)
    banned = ["<eos>", "<unk>", "the", "a"]
    allowed[tok.convert_tokens_to_ids(banned)] = False
    c = latent_constraints(tok, 5, 2, stop_token=".", vocab_mask=allowed)
    prompts = [tok("the cat sat on")["input_ids"], tok("a dog")["input_ids"]]
    return tok, model, c, prompts, set(tok.convert_tokens_to_ids(banned + ["."]))


@pytest.mark.parametrize("method", DECODING_METHODS)
def test_every_decoding_method_returns_constrained_latents(continuation, method):
    tok, model, c, prompts, forbidden = continuation
    out = decode(model, tok, prompts, method, 4, c, temperature=2.0)
    assert len(out) == len(prompts)
    for latents in out:
        assert len(latents) == 4
        for z in latents:
            assert c.min_length <= len(z) <= c.max_length, z
            assert not set(z) & forbidden, z
    if method.startswith("beam"):
        assert all(len({tuple(z) for z in latents}) == 4 for latents in out)  # distinct hypotheses
    if method == "greedy":
        assert all(len({tuple(z) for z in latents}) == 1 for latents in out)
        assert decode(model, tok, prompts, method, 4, c) == out  # deterministic
    if method in ("sample", "tempered", "nucleus"):
        assert decode(model, tok, prompts, method, 4, c, temperature=2.0, seed=0) == out  # seeded
        assert decode(model, tok, prompts, method, 4, c, temperature=2.0, seed=1) != out


def test_beam_search_of_width_one_is_greedy(continuation):
    tok, model, c, prompts, _ = continuation
    greedy = decode(model, tok, prompts, "greedy", 1, c)
    assert [beam_search(model, p, c, 1, 1) for p in prompts] == greedy


def test_exhaustive_beam_search_returns_the_exact_top_latents():
    """With at least as many beams as latents nothing is pruned: the n best are the n most likely under q."""
    toy = _toy()
    tok, model, c = toy["tokenizer"], toy["model"].eval(), toy["constraints"]
    prompt = tok(toy["dataset"][0]["prompt"])["input_ids"]
    log_q = exact_policy_log_probs(model, prompt, toy["latents"], c, 0)
    top = [toy["latents"][i] for i in log_q.topk(6).indices.tolist()]
    assert beam_search(model, prompt, c, num_beams=len(toy["latents"]), num_return=6) == top
    # narrower beams never return a latent outside the space, and the 5x beam finds at least as likely latents
    n = 4
    narrow, wide = (decode(model, tok, [prompt], m, n, c)[0] for m in ("beam", "beam_5x"))
    score = {tuple(z): v for z, v in zip(toy["latents"], log_q.tolist())}
    assert sum(score[tuple(z)] for z in wide) >= sum(score[tuple(z)] for z in narrow) - 1e-6


def test_diverse_beam_search_spreads_over_first_tokens():
    toy = _toy()
    tok, model, c = toy["tokenizer"], toy["model"].eval(), toy["constraints"]
    prompt = tok(toy["dataset"][0]["prompt"])["input_ids"]
    plain = beam_search(model, prompt, c, num_beams=4, num_return=4)
    diverse = beam_search(model, prompt, c, num_beams=4, num_return=4, num_groups=4, diversity_penalty=100.0)
    # a huge Hamming penalty makes the 4 one-beam groups start with 4 different tokens
    assert len({z[0] for z in diverse}) == 4
    assert len({z[0] for z in diverse}) >= len({z[0] for z in plain})


# ------------------------------------------------------------------------------------------------- the comparison


def test_ci_sized_comparison_table_has_every_method():
    from benchmarks.exact_posterior_compare import TRAINERS, run

    rows, table = run(steps=2, verbose=False)
    names = [r["method"] for r in rows]
    assert {"gfn", "ppo", "grpo", "rloo", "sft"} <= set(TRAINERS) and set(TRAINERS) <= set(names)
    for name in ["posterior p (target)", "start (untuned LM)", *TRAINERS]:
        assert f"| {name} |" in table
    target = rows[0]
    assert target["tv"] < 1e-12 and abs(target["kl"]) < 1e-9
    for r in rows:
        assert 0 <= r["tv"] <= 1 and r["entropy"] > 0 and 0 < r["distinct"] <= 1
