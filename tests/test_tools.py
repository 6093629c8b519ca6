"""Tools whose outputs are forced tokens of the state (gfn_trl.tools), and the arithmetic calculator.

The claim to check: with a tool, sampling, the loss's log-probabilities and replay all describe one policy whose
support is exactly the latents the tool admits, and GFlowNet training still reaches the exact posterior over them.
"""

import pytest
import torch

from gfn_trl.evaluation.exact import exact_policy_log_probs
from gfn_trl.sampling import LatentConstraints, left_pad, policy_log_probs, right_pad, sample_latents
from gfn_trl.tasks import arithmetic
from gfn_trl.testing import TOY_WORDS, exact_posterior_toy, tiny_tokenizer, toy_tool


def ids(tok, text):
    return tok(text, add_special_tokens=False)["input_ids"]


@pytest.fixture(scope="module")
def toy():
    return exact_posterior_toy("suffix", tool=True)


def constraints_of(toy, tool=True):
    return LatentConstraints(0, toy["max_length"], toy["min_length"], toy["vocab_mask"], toy["tool"] if tool else None)


def test_text_tool_forces_its_output_after_the_trigger():
    tok = tiny_tokenizer(TOY_WORDS)
    tool = toy_tool(tok)
    a, b, c, d = ids(tok, "a b c d")
    # states s_0..s_n: after "c" the tool writes "a" (even number of "b") or "d" (odd)
    assert tool.forced_tokens([a, c, a, b]) == [-1, -1, a, -1, -1]
    assert tool.forced_tokens([b, c, d, c]) == [-1, -1, d, -1, d]
    assert tool.forced_tokens([c]) == [-1, a]  # a latent cut by the maximum length ends mid-output
    assert tool.forced_tokens([]) == [-1]
    assert tool.forced_tokens([c, b]) == [-1, a, -1]  # "b" breaks the tool's output: the policy gives it q = 0
    with pytest.raises(ValueError, match="trigger"):
        type(tool)(tok, "zebra", lambda text: None)


def test_admits_is_the_tools_latent_space(toy):
    c = constraints_of(toy)
    tok = toy["tokenizer"]
    a, b, cc, d = ids(tok, "a b c d")
    assert c.admits([a, cc, a]) and c.admits([b, cc, d]) and c.admits([a, b, cc])  # the last: output cut at max
    assert not c.admits([a, cc, d]) and not c.admits([cc])  # wrong output; stop while the tool writes
    assert not c.admits([a, b, cc, a])  # too long
    assert len(toy["latents"]) < 84  # the tool removes latents from the 84 of the plain toy


@pytest.mark.parametrize(
    "text, result",
    [(" 6 - 0 =", " 6"), (" 6 - 0 = 6, 6 - 4 =", " 2"), (" 2 - 8 = -6, -6 + 3 =", " -3"), (" 9 + 9 =", " 18"),
     (" 6 - 3 - 4 =", " -1"),  # two operands at most: the last two (the paper's limit_capability: 2)
     (" 6 - 0 = 6 - 4 =", " 2"), (" 6 =", None), (" =", None), (" 1 -- 3 =", None), (" 6 - 0", None)],
)
def test_calculator_result(text, result):
    assert arithmetic.calculator_result(text) == result


def test_sampler_only_writes_latents_the_tool_admits(toy):
    c = constraints_of(toy)
    tok, model = toy["tokenizer"], toy["model"].eval()
    prompt = ids(tok, "x y x")
    p_ids, p_mask = left_pad([prompt] * 256, tok.pad_token_id)
    z, lengths = sample_latents(model, p_ids, p_mask, c, temperature=2.0, row_seeds=torch.arange(256))
    latents = [z[i, : int(n)].tolist() for i, n in enumerate(lengths)]
    assert all(c.admits(x) for x in latents)
    trigger = ids(tok, "c")[0]
    assert sum(trigger in x[:-1] for x in latents) > 20  # the tool fired in many latents (not vacuous)
    # The same sampler without the tool writes latents that the tool would not admit
    plain = constraints_of(toy, tool=False)
    z, lengths = sample_latents(model, p_ids, p_mask, plain, temperature=2.0, row_seeds=torch.arange(256))
    assert not all(c.admits(z[i, : int(n)].tolist()) for i, n in enumerate(lengths))


def test_forced_tokens_have_probability_one_and_block_the_stop(toy):
    c = constraints_of(toy)
    tok, model = toy["tokenizer"], toy["model"].eval()
    a, b, cc, d = ids(tok, "a b c d")
    z, lengths = right_pad([[b, cc, d], [cc, a, b]], 0)
    p_ids, p_mask = left_pad([ids(tok, "x y x")] * 2, tok.pad_token_id)
    log_pf, log_pterm = policy_log_probs(model, p_ids, p_mask, z, lengths, c)
    assert log_pf[0, 2].item() == 0.0 and log_pf[1, 1].item() == 0.0  # the tool's tokens
    assert (log_pf[0, :2] < 0).all() and log_pf[1, 0] < 0 and log_pf[1, 2] < 0  # the policy's own
    assert log_pterm[0, 2].item() == float("-inf") and log_pterm[1, 1].item() == float("-inf")
    assert torch.isfinite(log_pterm[0, [1, 3]]).all()  # (s_0 cannot stop: min_length = 1)


def test_the_policy_is_normalised_over_the_latents_the_tool_admits(toy):
    """Σ_Z q(Z ⊤) over the admitted latents is 1: the loss's log-probabilities are those of the sampler's policy."""
    tok, model = toy["tokenizer"], toy["model"].eval()
    prompt = ids(tok, "x y x")
    log_q = exact_policy_log_probs(model, prompt, toy["latents"], constraints_of(toy), tok.pad_token_id)
    assert log_q.exp().sum().item() == pytest.approx(1.0, abs=1e-5)
    without = exact_policy_log_probs(model, prompt, toy["latents"], constraints_of(toy, tool=False), tok.pad_token_id)
    assert without.exp().sum().item() < 0.99  # without the tool's rule, these latents are not the whole support


def test_gfn_with_a_tool_matches_the_exact_posterior():
    from benchmarks.exact_posterior import run

    history, trainer = run("suffix", steps=400, verbose=False, tool=True)
    assert history[0][1] > 0.3, history  # far from the posterior at the start
    assert history[-1][1] <= 0.05, history
    assert all(abs(mass - 1) < 1e-5 for *_, mass in history)  # q stays normalised over the admitted latents
    replayed = [h["behaviour/replay"] for h in trainer.state.log_history if "behaviour/replay" in h]
    assert max(replayed) > 0  # replayed latents were trained on, with their forced positions recomputed


def test_ppo_with_a_tool_treats_its_tokens_as_forced(tmp_path):
    """PPO shares the constrained policy: its rollouts stay in the tool's latent space, the tool's tokens have
    log-probability 0 under the policy and the reference (ratio 1, no KL), and training runs."""
    from peft import LoraConfig

    from gfn_trl import PPOConfig, PPOTrainer

    toy = exact_posterior_toy("suffix", tool=True)
    args = PPOConfig(str(tmp_path), max_steps=4, learning_rate=2e-3, per_device_train_batch_size=1,
                     num_generations=32, max_completion_length=3, min_completion_length=1, logging_steps=1,
                     save_strategy="no", report_to="none", use_cpu=True, disable_tqdm=True, seed=0,
                     sampling_temperature=2.0)
    trainer = PPOTrainer(toy["model"], args, train_dataset=toy["dataset"], processing_class=toy["tokenizer"],
                         peft_config=LoraConfig(r=8), vocab_mask=toy["vocab_mask"], tool=toy["tool"])
    inputs = trainer._prepare_inputs([trainer.train_dataset[0]])
    z, lengths = inputs["z"], inputs["lengths"]
    latents = [z[i, : int(n)].tolist() for i, n in enumerate(lengths)]
    assert all(trainer.constraints.admits(x) for x in latents)
    forced = trainer.constraints.forced(z)[:, :-1] >= 0  # (B, T): token k+1 written by the tool
    taken = torch.arange(z.shape[1])[None, :] < lengths[:, None]
    assert (forced & taken).any()
    assert (inputs["old_log_probs"][:, :-1][forced & taken] == 0).all()
    assert (inputs["old_log_probs"][:, :-1][~forced & taken] < 0).all()
    trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert len(losses) == 4 and all(torch.isfinite(torch.tensor(losses)))
