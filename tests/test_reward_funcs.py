"""Reward functions in TRL's signature (`reward_funcs`): what they receive, how they combine with the LM prior into
log R = α · log p_LM + Σ_i w_i r_i, None/NaN, prefix scoring, replay, checkpoints, the baselines, and the exact
tilted posterior on the enumerable toy."""

import asyncio
import math
import os
import tempfile

import pytest
import torch
from datasets import Dataset
from peft import LoraConfig

os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")

from gfn_trl import GFlowNetConfig, GFlowNetTrainer  # noqa: E402
from gfn_trl.data import tokenize_dataset  # noqa: E402
from gfn_trl.rewards import prefix_log_rewards  # noqa: E402
from gfn_trl.rewards.functions import ADDED_COLUMNS, RewardFunctions  # noqa: E402
from gfn_trl.sampling import latent_batch  # noqa: E402
from gfn_trl.testing import tiny_model, tiny_tokenizer  # noqa: E402
from gfn_trl.trainers import PPOConfig, PPOTrainer  # noqa: E402

ROWS = {"prompt": ["the cat", "a dog"], "suffix": ["slept .", "ran ."], "answer": ["cat", "dog"]}


def _config(tmp_path, cls=GFlowNetConfig, **kw):
    base = dict(output_dir=str(tmp_path), max_steps=2, per_device_train_batch_size=2, num_generations=3,
                max_completion_length=4, learning_rate=1e-2, warmup_steps=0, logging_steps=1, save_strategy="no",
                report_to="none", use_cpu=True, disable_tqdm=True, seed=3)
    base.update(kw)
    return cls(**base)


def _trainer(tmp_path, funcs, cls=GFlowNetTrainer, config=GFlowNetConfig, rows=ROWS, peft=True, **kw):
    tok = tiny_tokenizer()
    return cls(tiny_model("gpt2", len(tok), seed=0), _config(tmp_path, config, **kw),
               train_dataset=Dataset.from_dict(rows), processing_class=tok,
               peft_config=LoraConfig(r=4) if peft else None, reward_funcs=funcs)


def count_word(word):
    """A reward of the latent's text: the number of times `word` occurs."""

    def reward(prompts, completions, completion_ids, **kwargs):
        return [float(c.split().count(word)) for c in completions]

    reward.__name__ = f"count_{word}"
    return reward


def _latents(trainer, *texts):
    tok = trainer.processing_class
    ids = [tok(t, add_special_tokens=False)["input_ids"] for t in texts]
    return ids, *latent_batch(ids, trainer.constraints.stop_token_id)


def _lm_log_rewards(trainer, rows, z, lengths):
    """(B, S) the base LM's per-prefix log-likelihood, computed here (not through the trainer's reward path)."""
    base = tiny_model("gpt2", len(trainer.processing_class), seed=0).eval()
    return prefix_log_rewards(base, [r["reward_prompt_ids"] for r in rows], z, lengths, 0, 0,
                              [r["suffix_ids"] for r in rows])


# ------------------------------------------------------------------------------------------- TRL's signature


def test_functions_receive_the_decoded_latent_its_ids_and_the_extra_columns(tmp_path):
    seen = []

    def record(prompts, completions, completion_ids, **kwargs):
        seen.append(dict(prompts=prompts, completions=completions, completion_ids=completion_ids, **kwargs))
        return [0.0] * len(completions)

    trainer = _trainer(tmp_path, record, loss_type="tb")
    rows = [trainer.train_dataset[0], trainer.train_dataset[1]]
    ids, z, lengths = _latents(trainer, "on the mat", "ran")
    trainer.score_latents(rows, z, lengths)
    (call,) = seen
    assert call["prompts"] == ["the cat", "a dog"]
    assert call["completions"] == ["on the mat", "ran"]  # the latent's text only: no prompt, no suffix, no stop
    assert call["completion_ids"] == ids  # z_1..z_n, without the stop token
    assert call["answer"] == ["cat", "dog"] and call["suffix"] == ["slept .", "ran ."]  # the dataset's columns
    assert not set(ADDED_COLUMNS) & set(call)  # not the columns tokenize_dataset adds
    assert call["trainer_state"] is trainer.state and callable(call["log_metric"])


def test_added_columns_are_exactly_those_tokenize_dataset_adds():
    tok = tiny_tokenizer()
    data = Dataset.from_dict(ROWS)
    added = set(tokenize_dataset(data, tok, tiny_model("gpt2", len(tok)).config, 4).column_names) - set(ROWS)
    assert added == set(ADDED_COLUMNS)


def test_conversational_prompts_get_completions_as_assistant_messages():
    tok = tiny_tokenizer()
    seen = []

    def record(prompts, completions, completion_ids, **kwargs):
        seen.append(completions)
        return [1.0] * len(completions)

    funcs = RewardFunctions(record)
    rows = [{"prompt": [{"role": "user", "content": "the cat"}]}]
    z, lengths = latent_batch([tok("on the mat", add_special_tokens=False)["input_ids"]], 0)
    funcs.score(rows, z, lengths, tok)
    assert seen == [[[{"role": "assistant", "content": "on the mat"}]]]


def test_async_functions_and_callable_objects_are_called():
    tok = tiny_tokenizer()

    async def slow_len(prompts, completions, completion_ids, **kwargs):
        await asyncio.sleep(0)
        return [float(len(ids)) for ids in completion_ids]

    class Const:
        async def __call__(self, prompts, completions, completion_ids, **kwargs):
            return [2.0] * len(completions)

    funcs = RewardFunctions([slow_len, Const(), count_word("the")], reward_weights=[1.0, 0.5, -1.0])
    assert funcs.names == ["slow_len", "Const", "count_the"]
    rows = [{"prompt": "x"}] * 2
    z, lengths = latent_batch([tok("on the mat", add_special_tokens=False)["input_ids"], [3]], 0)
    scores = funcs.score(rows, z, lengths, tok)
    assert scores.values[0, :, 3].tolist() == [3.0, 2.0, 1.0]
    assert scores.values[1, :, 1].tolist() == [1.0, 2.0, 0.0]


# ------------------------------------------------------------------------------------------- the tilted reward


def test_weights_and_the_lm_prior_combine_as_documented(tmp_path):
    the, mat = count_word("the"), count_word("mat")
    trainer = _trainer(tmp_path, [the, mat], loss_type="tb", lm_reward_weight=0.5, reward_weights=[2.0, -3.0])
    rows = [trainer.train_dataset[0], trainer.train_dataset[1]]
    _, z, lengths = _latents(trainer, "on the mat", "the the")
    got = trainer.score_latents(rows, z, lengths)
    lm = _lm_log_rewards(trainer, rows, z, lengths)
    # terminal-only functions: their terms enter at s_n only; the other prefixes carry α · log p_LM
    want = 0.5 * lm
    want[0, 3] += 2.0 * 1 - 3.0 * 1
    want[1, 2] += 2.0 * 2
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    final = trainer.score_latents(rows, z, lengths, final_only=True)
    torch.testing.assert_close(final, want.gather(1, lengths[:, None])[:, 0], atol=1e-5, rtol=0)


def test_a_function_that_scores_prefixes_is_called_on_every_prefix(tmp_path):
    calls = []

    def the_count(prompts, completions, completion_ids, **kwargs):
        calls.append(list(completions))
        return [float(c.split().count("the")) for c in completions]

    the_count.scores_prefixes = True
    trainer = _trainer(tmp_path, the_count, loss_type="subtb", min_completion_length=1, reward_weights=[1.5])
    rows = [trainer.train_dataset[0]] * 2
    _, z, lengths = _latents(trainer, "on the mat", "on the")
    got = trainer.score_latents(rows, z, lengths)
    # the prefixes s_1..s_n (the first terminable one on), each scored once although the two latents share two
    assert calls == [["on", "on the", "on the mat"]]
    lm = _lm_log_rewards(trainer, rows, z, lengths)
    r = torch.tensor([[0, 0, 1.5, 1.5], [0, 0, 1.5, 0]])
    torch.testing.assert_close(got[:, 1:], (lm + r)[:, 1:], atol=1e-5, rtol=0)


def test_a_terminal_only_function_with_a_per_prefix_loss_is_refused(tmp_path):
    with pytest.raises(ValueError, match=r"\['count_the'\] score finished latents only.*loss_type='tb'"):
        _trainer(tmp_path, count_word("the"), loss_type="subtb")
    with pytest.raises(ValueError, match="finished latents only"):
        _trainer(tmp_path, count_word("the"), loss_type="db")


def test_no_lm_prior_loads_no_reward_lm(tmp_path):
    trainer = _trainer(tmp_path, count_word("the"), peft=False, loss_type="tb", lm_reward_weight=0.0)
    assert trainer.reward_model is None and trainer.reward is None  # no frozen copy of the initial model
    rows = [trainer.train_dataset[0]]
    _, z, lengths = _latents(trainer, "the cat the")
    assert trainer.score_latents(rows, z, lengths).tolist() == [[0.0, 0.0, 0.0, 2.0]]
    trainer.train()
    assert all(math.isfinite(h["loss"]) for h in trainer.state.log_history if "loss" in h)


def test_bad_reward_settings_are_refused(tmp_path):
    with pytest.raises(ValueError, match="there is no reward"):
        _trainer(tmp_path, None, lm_reward_weight=0.0)
    with pytest.raises(ValueError, match="reward_weights has 2 entries for 1 reward functions"):
        _trainer(tmp_path, count_word("a"), loss_type="tb", reward_weights=[1.0, 2.0])
    with pytest.raises(ValueError, match="no reward_funcs were given"):
        _trainer(tmp_path, None, reward_weights=[1.0])
    with pytest.raises(ValueError, match=r"lm_reward_weight must lie in \[0, ∞\)"):
        _config(tmp_path, lm_reward_weight=-1.0)
    with pytest.raises(ValueError, match="finite numbers"):
        _config(tmp_path, reward_weights=[1.0, float("nan")])
    with pytest.raises(ValueError, match="lm_reward_weight=0 drops that term"):
        _config(tmp_path, lm_reward_weight=0.0, reward_model_name_or_path="x")
    with pytest.raises(TypeError, match="reward_funcs\\[0\\] is a int"):
        _trainer(tmp_path, [3], loss_type="tb")


def test_lm_reward_weight_parses_from_the_command_line_and_help_names_it(capsys):
    from trl import TrlParser

    parser = TrlParser((GFlowNetConfig,))
    (cfg,) = parser.parse_args_into_dataclasses(["--output_dir", "x", "--lm_reward_weight", "0.5",
                                                 "--reward_weights", "1", "-2", "--use_cpu", "true"])
    assert cfg.lm_reward_weight == 0.5 and cfg.reward_weights == [1.0, -2.0]
    with pytest.raises(SystemExit):
        parser.parse_args_into_dataclasses(["--help"])
    out = capsys.readouterr().out
    assert "--lm_reward_weight" in out and "--reward_weights" in out


# ------------------------------------------------------------------------------------------- None and NaN


def _returns(values):
    def fixed(prompts, completions, completion_ids, **kwargs):
        return list(values)

    return fixed


def test_none_leaves_the_term_out_as_in_trl(tmp_path):
    trainer = _trainer(tmp_path, [_returns([None, 4.0]), _returns([1.0, None])], loss_type="tb",
                       reward_weights=[1.0, 10.0])
    rows = [trainer.train_dataset[0], trainer.train_dataset[1]]
    _, z, lengths = _latents(trainer, "on", "ran")
    lm = _lm_log_rewards(trainer, rows, z, lengths)[:, 1]
    got = trainer.score_latents(rows, z, lengths, final_only=True)
    torch.testing.assert_close(got, lm + torch.tensor([10.0, 4.0]), atol=1e-5, rtol=0)


def test_all_none_without_the_lm_prior_is_an_error(tmp_path):
    trainer = _trainer(tmp_path, [_returns([None, 1.0]), _returns([None, None])], loss_type="tb",
                       lm_reward_weight=0.0)
    rows = [trainer.train_dataset[0], trainer.train_dataset[1]]
    _, z, lengths = _latents(trainer, "on the", "ran")
    with pytest.raises(ValueError, match=r"Every reward function returned None for the latent 'on the' \(prompt "
                                         r"'the cat'\) and lm_reward_weight is 0"):
        trainer.score_latents(rows, z, lengths)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_rewards_are_errors_naming_the_function_and_sample(tmp_path, bad):
    trainer = _trainer(tmp_path, [_returns([1.0, bad])], loss_type="tb")
    rows = [trainer.train_dataset[0], trainer.train_dataset[1]]
    _, z, lengths = _latents(trainer, "on", "ran")
    with pytest.raises(ValueError, match=r"'fixed' returned (nan|inf|-inf) for the completion 'ran' of the prompt "
                                         r"'a dog'.*finite number.*or None"):
        trainer.score_latents(rows, z, lengths)


def test_wrong_length_and_non_numbers_are_errors(tmp_path):
    trainer = _trainer(tmp_path, [_returns([1.0])], loss_type="tb")
    rows = [trainer.train_dataset[0], trainer.train_dataset[1]]
    _, z, lengths = _latents(trainer, "on", "ran")
    with pytest.raises(ValueError, match="returned 1 rewards, but 2 were expected"):
        trainer.score_latents(rows, z, lengths)
    trainer.reward_functions.funcs[0] = _returns([1.0, "good"])
    with pytest.raises(TypeError, match="returned 'good' for the completion 'ran'"):
        trainer.score_latents(rows, z, lengths)


# ------------------------------------------------------------------------------------------- reward models


def test_a_sequence_classification_model_scores_prompt_plus_completion(tmp_path):
    from transformers import GPT2Config, GPT2ForSequenceClassification

    tok = tiny_tokenizer()
    torch.manual_seed(1)
    clf = GPT2ForSequenceClassification(GPT2Config(vocab_size=len(tok), n_embd=16, n_layer=1, n_head=2,
                                                   num_labels=1, pad_token_id=0)).eval()
    trainer = GFlowNetTrainer(tiny_model("gpt2", len(tok), seed=0), _config(tmp_path, loss_type="tb",
                                                                           lm_reward_weight=0.0),
                              train_dataset=Dataset.from_dict(ROWS), processing_class=tok, peft_config=LoraConfig(r=4),
                              reward_funcs=clf, reward_processing_classes=tok)
    rows = [trainer.train_dataset[0], trainer.train_dataset[1]]
    _, z, lengths = _latents(trainer, "on the mat", "ran")
    got = trainer.score_latents(rows, z, lengths, final_only=True)
    with torch.no_grad():
        want = [clf(**tok(t, return_tensors="pt", add_special_tokens=False)).logits[0, 0].item()
                for t in ("the cat" + "on the mat", "a dog" + "ran")]  # TRL's text: prompt + completion
    torch.testing.assert_close(got, torch.tensor(want), atol=1e-5, rtol=0)
    # by path, as TRL takes it: AutoModelForSequenceClassification(num_labels=1) and the tokenizer saved beside it
    clf.save_pretrained(tmp_path / "clf")
    tok.save_pretrained(tmp_path / "clf")
    by_path = RewardFunctions(str(tmp_path / "clf"))
    assert by_path.names == ["clf"]
    scores = by_path.score(rows, z, lengths, tok)
    torch.testing.assert_close(scores.values[[0, 1], 0, [3, 1]].float(), torch.tensor(want), atol=1e-5, rtol=0)


# ------------------------------------------------------------------------------------------- replay, checkpoints


def test_replayed_latents_carry_the_reward_a_fresh_scoring_gives(tmp_path):
    the = count_word("the")
    the.scores_prefixes = True
    trainer = _trainer(tmp_path, the, max_steps=6, on_policy_prob=0.5, tempered_prob=0.0, replay_prob=0.5,
                       reward_weights=[2.0], lm_reward_weight=0.7)
    trainer.train()
    assert any(h.get("behaviour/replay") for h in trainer.state.log_history)
    for row in trainer.train_dataset:
        entries = trainer.replay_buffer.entries(row["gfn_key"])
        assert entries
        ids, z, lengths = [list(e.tokens) for e in entries], *latent_batch([list(e.tokens) for e in entries], 0)
        fresh = trainer.score_latents([row] * len(ids), z, lengths, log_metrics=False)
        for b, e in enumerate(entries):
            assert torch.allclose(torch.tensor(e.log_rewards), fresh[b, : len(e.tokens) + 1], atol=1e-5)


def test_resume_with_reward_functions_reproduces_the_uninterrupted_run(tmp_path):
    def run(out, **kw):
        the = count_word("the")
        the.scores_prefixes = True
        return _trainer(out, the, max_steps=6, seed=5, lm_reward_weight=0.5, reward_weights=[1.5], **kw)

    a = run(tmp_path / "a")
    a.train()
    run(tmp_path / "b", save_strategy="steps", save_steps=3).train()
    c = run(tmp_path / "b", save_strategy="steps", save_steps=3)
    c.train(resume_from_checkpoint=str(tmp_path / "b" / "checkpoint-3"))
    losses = lambda t: [h["loss"] for h in t.state.log_history if "loss" in h]  # noqa: E731
    assert losses(c)[3:] == losses(a)[3:]
    for (n, p), (_, q) in zip(a.model.named_parameters(), c.model.named_parameters()):
        assert torch.equal(p, q), n
    assert c.replay_buffer.state_dict()["data"] == a.replay_buffer.state_dict()["data"]
    # another reward (a weight, α, a function) would make the saved buffer's rewards wrong: refused
    for change in (dict(lm_reward_weight=0.5, reward_weights=[2.0]), dict(lm_reward_weight=1.0, reward_weights=[1.5])):
        the = count_word("the")
        the.scores_prefixes = True
        d = _trainer(tmp_path / "b", the, max_steps=6, seed=5, save_strategy="steps", save_steps=3, **change)
        with pytest.raises(ValueError, match="different run.*reward: checkpoint 'lm_reward_weight=0.5"):
            d.train(resume_from_checkpoint=str(tmp_path / "b" / "checkpoint-3"))


# ------------------------------------------------------------------------------------------- the baselines


def test_ppo_is_rewarded_with_the_tilted_reward(tmp_path):
    trainer = _trainer(tmp_path, count_word("the"), cls=PPOTrainer, config=PPOConfig, lm_reward_weight=0.5,
                       reward_weights=[3.0], max_steps=1, num_ppo_epochs=1)
    batch = trainer._rollout(list(trainer.train_dataset), 0)
    lm = _lm_log_rewards(trainer, batch.rows, batch.z, batch.lengths).gather(1, batch.lengths[:, None])[:, 0]
    tok = trainer.processing_class
    r = torch.tensor([float(tok.decode(batch.z[b, : int(batch.lengths[b])]).split().count("the"))
                      for b in range(len(batch.rows))])
    final = batch.log_r.gather(1, batch.lengths[:, None])[:, 0]
    torch.testing.assert_close(final, 0.5 * lm + 3.0 * r, atol=1e-5, rtol=0)
    trainer.train()


@pytest.mark.parametrize("lm_weight", [0.0, 0.5])
def test_grpo_gets_the_same_reward_as_the_gflownet(tmp_path, lm_weight):
    from trl import GRPOConfig

    from gfn_trl.trainers.trl_baselines import build_grpo_trainer

    tok = tiny_tokenizer()
    the = count_word("the")
    gfn = _trainer(tmp_path / "gfn", the, loss_type="tb", lm_reward_weight=lm_weight, reward_weights=[2.0])
    args = GRPOConfig(output_dir=tempfile.mkdtemp(), per_device_train_batch_size=4, num_generations=4, max_steps=1,
                      report_to="none", use_cpu=True, bf16=False, disable_tqdm=True, logging_steps=1)
    grpo = build_grpo_trainer(tiny_model("gpt2", len(tok), seed=0), args, Dataset.from_dict(ROWS), gfn.constraints,
                              processing_class=tok, peft_config=LoraConfig(r=4), reward_funcs=[the],
                              reward_weights=[2.0], lm_reward_weight=lm_weight)
    assert args.reward_weights == ([lm_weight] if lm_weight else []) + [2.0]
    rows = [gfn.train_dataset[0], gfn.train_dataset[1]]
    ids, z, lengths = _latents(gfn, "on the mat", "the")
    want = gfn.score_latents(rows, z, lengths, final_only=True)
    # TRL's inputs: completions with the stop token, every dataset column (tokenized ones too), TRL's extras
    columns = {c: [r[c] for r in rows] for c in grpo.train_dataset.column_names if c != "prompt"}
    stop = gfn.constraints.stop_token_id
    terms = [f(prompts=[r["prompt"] for r in rows], completions=["?", "?"], completion_ids=[i + [stop] for i in ids],
               trainer_state=grpo.state, log_metric=lambda *a: None, log_extra=lambda *a: None, **columns)
             for f in grpo.reward_funcs]
    got = (torch.tensor(terms, dtype=torch.float32) * torch.tensor(args.reward_weights)[:, None]).sum(0)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    grpo.train()


def test_grpo_refuses_weights_set_on_its_config(tmp_path):
    from trl import GRPOConfig

    from gfn_trl.trainers.trl_baselines import build_grpo_trainer, latent_constraints

    tok = tiny_tokenizer()
    args = GRPOConfig(output_dir=tempfile.mkdtemp(), per_device_train_batch_size=4, num_generations=4,
                      report_to="none", use_cpu=True, reward_weights=[1.0, 1.0])
    with pytest.raises(ValueError, match="pass the weights to the builder"):
        build_grpo_trainer(tiny_model("gpt2", len(tok)), args, Dataset.from_dict(ROWS), latent_constraints(tok, 4),
                           processing_class=tok, reward_funcs=[count_word("the")])


# ------------------------------------------------------------------------------------------- the exact tilted posterior


@pytest.mark.parametrize("loss, prefixes, lm_weight", [("subtb", True, 1.0), ("tb", False, 0.0)])
def test_the_trained_policy_reaches_the_exact_tilted_posterior(loss, prefixes, lm_weight):
    """The CI version of `python benchmarks/exact_posterior.py --reward_func tokens` (benchmarks/RESULTS.md: TV <=
    0.012 after 400 steps for SubTB with prefix scoring and TB with terminal scoring, with and without the LM prior):
    250 steps, and the looser bound TV <= 0.05.  The target α · log p_LM(Z Y | X) + r(Z) over the toy's 84 latents is
    enumerated exactly, r called directly on each latent."""
    from benchmarks.exact_posterior import run, tilted_target, token_reward
    from gfn_trl.evaluation.exact import tv_and_kl
    from gfn_trl.testing import exact_posterior_toy

    history, trainer = run("suffix", steps=250, loss=loss, verbose=False, every=250, reward_func="tokens",
                           lm_weight=lm_weight, prefixes=prefixes)
    assert trainer.reward_spec().prefixes == (prefixes,)
    assert history[0][1] > 0.5, history  # the untrained policy is far from the target
    assert history[-1][1] <= 0.05, history
    toy = exact_posterior_toy("suffix")
    tilted, _ = tilted_target(trainer, toy, token_reward(toy["tokenizer"]), lm_weight, 1.0)
    untilted, _ = tilted_target(trainer, toy)  # the LM-only posterior of the paper
    assert tv_and_kl(tilted, untilted)[0] > 0.3  # the reward function moves the target far


@pytest.mark.parametrize("prefixes", [False, True])
def test_the_subtb_residual_is_logged_only_when_every_prefix_reward_is_complete(tmp_path, prefixes):
    """A terminal-only function's term is missing from the prefixes' log R, so the per-window SubTB residual would
    measure nothing there: it is logged with prefix-scoring functions, not with terminal-only ones (TB)."""
    func = count_word("the")
    if prefixes:
        func.scores_prefixes = True
    trainer = _trainer(tmp_path, func, loss_type="subtb" if prefixes else "tb")
    trainer.train()
    logged = {k for h in trainer.state.log_history for k in h}
    assert "loss" in logged
    assert any(k.startswith("subtb_residual/") for k in logged) == prefixes
