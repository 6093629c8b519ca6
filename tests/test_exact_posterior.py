"""The central claim: GFlowNet training makes q(Z) match the exact posterior p(Z | X[, Y]) ∝ R(Z).

The toy (gfn_trl.testing.exact_posterior_toy) has 84 latents (1-3 tokens over a 4-token alphabet), so both the
true posterior and the policy's q(Z ⊤) are computed exactly by enumeration.  The LM's conditionals are sharp
(checked below), so matching the posterior is not matching a near-uniform distribution.
"""

import pytest
import torch

from benchmarks.exact_posterior import run
from gfn_trl.evaluation.exact import tv_and_kl
from gfn_trl.testing import exact_posterior_toy, exact_target_and_policy


@pytest.mark.parametrize("reward", ["suffix", "stop"])
def test_the_toy_posterior_is_far_from_uniform_and_from_the_prior(reward):
    toy = exact_posterior_toy(reward)
    from gfn_trl.evaluation.exact import exact_log_rewards

    tok = toy["tokenizer"]
    row = toy["dataset"][0]
    suffix = tok(row["suffix"], add_special_tokens=False)["input_ids"] if reward == "suffix" else None
    log_r = exact_log_rewards(toy["model"].eval(), tok(row["prompt"])["input_ids"], toy["latents"], 0, 0, suffix)
    uniform = torch.zeros_like(log_r)
    _, kl_uniform = tv_and_kl(log_r, uniform)
    assert kl_uniform > 1.0  # nats: the target is sharp
    assert torch.softmax(log_r, 0).max() > 0.1  # one latent alone holds >10% of the mass (uniform: 1.2%)


@pytest.fixture(scope="module", params=["suffix", "stop"])
def trained(request):
    """(reward kind, [(step, TV, KL, Σq)], trainer) after 400 steps of modified SubTB."""
    history, trainer = run(request.param, steps=400, verbose=False)
    return request.param, history, trainer


def test_subtb_matches_the_exact_posterior(trained):
    _, history, _ = trained
    step0_tv, final_tv, final_kl = history[0][1], history[-1][1], history[-1][2]
    assert step0_tv > 0.5  # the untrained policy is far from the posterior
    assert final_tv <= 0.05, history
    assert final_kl <= 0.02, history
    assert all(abs(mass - 1) < 1e-5 for *_, mass in history)  # q is normalised over the support throughout


def test_tb_with_batch_log_z_matches_the_exact_posterior():
    history, _ = run("suffix", steps=400, loss="tb", verbose=False)
    assert history[-1][1] <= 0.05, history


def test_the_trained_policy_differs_from_the_reward_argmax(trained):
    """Distribution matching, not reward maximisation: the top latent keeps roughly its posterior share."""
    reward, _, trainer = trained
    toy = exact_posterior_toy(reward)
    log_r, log_q = exact_target_and_policy(trainer, toy)
    p, q = torch.softmax(log_r, 0), log_q.exp()
    top = int(p.argmax())
    assert abs(q[top] - p[top]) < 0.05 and q[top] < 0.9
    assert (q > 1e-3).sum() >= (p > 2e-3).sum()  # every latent with real posterior mass keeps being sampled


@pytest.mark.parametrize("min_length", [0, 2])
def test_min_length_variants_match_the_exact_posterior(min_length):
    """min_length=0: exactly the paper's eq. 3, no log Z, the empty latent allowed.  min_length=2: s_1 cannot
    stop, s_0's flow is the batch log Z estimate."""
    history, trainer = run("stop", steps=400, verbose=False, min_length=min_length)
    assert trainer.needs_log_z == (min_length > 0)
    assert history[-1][1] <= 0.05, history
