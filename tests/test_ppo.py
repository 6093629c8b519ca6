"""PPO: the pure functions against hand computations, and the trainer on the exact-posterior toy."""

import math

import pytest
import torch
from peft import LoraConfig

from gfn_trl import PPOConfig, PPOTrainer
from gfn_trl.evaluation.exact import exact_policy_log_probs
from gfn_trl.ppo_losses import (
    action_log_probs,
    action_mask,
    adaptive_kl_coef,
    clipped_surrogate_loss,
    clipped_value_loss,
    gae_advantages,
    kl_penalised_rewards,
    masked_whiten,
)
from gfn_trl.sampling import left_pad, policy_log_probs
from gfn_trl.testing import exact_posterior_toy, exact_target_and_policy


# ---------------------------------------------------------------------------------------------------------- GAE
def test_gae_matches_a_hand_computation():
    # one episode of 3 actions, γ = 0.9, λ = 0.8
    r = torch.tensor([[1.0, 0.0, 2.0]])
    v = torch.tensor([[0.5, 1.0, 1.5]])
    mask = torch.ones(1, 3, dtype=torch.bool)
    adv, ret = gae_advantages(r, v, mask, gamma=0.9, lam=0.8)
    d2 = 2.0 - 1.5  # terminal: no bootstrap
    d1 = 0.0 + 0.9 * 1.5 - 1.0
    d0 = 1.0 + 0.9 * 1.0 - 0.5
    a2 = d2
    a1 = d1 + 0.72 * a2
    a0 = d0 + 0.72 * a1
    assert torch.allclose(adv, torch.tensor([[a0, a1, a2]]))
    assert torch.allclose(ret, adv + v)


def test_gae_is_the_discounted_sum_of_td_errors_and_stops_at_each_episode_end():
    torch.manual_seed(0)
    B, A, gamma, lam = 5, 6, 0.97, 0.9
    lengths = torch.tensor([0, 2, 5, 3, 1])  # n tokens, n + 1 actions
    mask = action_mask(lengths, A)
    r, v = torch.randn(B, A), torch.randn(B, A)
    adv, ret = gae_advantages(r, v, mask, gamma, lam)
    for b in range(B):
        last = int(lengths[b])
        V = [float(v[b, t]) if t <= last else 0.0 for t in range(A + 1)]
        delta = [float(r[b, t]) + gamma * V[t + 1] - V[t] for t in range(last + 1)]
        for t in range(A):
            want = sum((gamma * lam) ** k * delta[t + k] for k in range(last + 1 - t)) if t <= last else 0.0
            assert adv[b, t].item() == pytest.approx(want, abs=1e-5)
            assert ret[b, t].item() == pytest.approx(want + V[t] if t <= last else 0.0, abs=1e-5)


def test_gae_with_lambda_one_and_no_values_is_the_return_to_go():
    r = torch.tensor([[1.0, 2.0, 3.0, 9.0]])
    mask = action_mask(torch.tensor([2]), 4)  # the 4th column is padding and must not leak in
    adv, ret = gae_advantages(r, torch.zeros(1, 4), mask, gamma=1.0, lam=1.0)
    assert adv.tolist() == [[6.0, 5.0, 3.0, 0.0]] and ret.tolist() == adv.tolist()


# ---------------------------------------------------------------------------------------------------------- clipping
def test_clipped_surrogate_matches_hand_values_and_stops_gradients_when_clipped():
    old = torch.zeros(1, 4)
    # ratios 1.5, 0.5, 1.5, 0.5 with advantages +1, +1, -1, -1
    new = torch.log(torch.tensor([[1.5, 0.5, 1.5, 0.5]])).requires_grad_(True)
    adv = torch.tensor([[1.0, 1.0, -1.0, -1.0]])
    mask = torch.ones(1, 4, dtype=torch.bool)
    loss, clipfrac = clipped_surrogate_loss(new, old, adv, mask, cliprange=0.2)
    # per action: -min(A ρ, A clip(ρ)) = -1.2, -0.5, +1.5, +0.8
    assert loss.item() == pytest.approx((-1.2 - 0.5 + 1.5 + 0.8) / 4)
    assert clipfrac.item() == pytest.approx(0.5)  # actions 0 and 3 are clipped
    loss.backward()
    g = new.grad[0]
    assert g[0].item() == 0.0 and g[3].item() == 0.0  # clipped: no gradient
    assert g[1].item() == pytest.approx(-0.5 / 4) and g[2].item() == pytest.approx(1.5 / 4)


def test_surrogate_gradient_at_ratio_one_is_the_policy_gradient():
    log_q = torch.randn(3, 5, requires_grad=True)
    adv = torch.randn(3, 5)
    mask = action_mask(torch.tensor([4, 1, 2]), 5)
    loss, _ = clipped_surrogate_loss(log_q, log_q.detach(), adv, mask, 0.2)
    loss.backward()
    want = -adv * mask / mask.sum()
    assert torch.allclose(log_q.grad, want, atol=1e-6)


def test_value_clipping_takes_the_larger_error():
    old = torch.tensor([[0.0, 0.0]])
    new = torch.tensor([[1.0, 0.1]])
    ret = torch.tensor([[2.0, -1.0]])
    mask = torch.ones(1, 2, dtype=torch.bool)
    loss = clipped_value_loss(new, old, ret, mask, cliprange_value=0.2)
    # action 0: unclipped (1-2)^2 = 1, clipped (0.2-2)^2 = 3.24 -> 3.24; action 1: (0.1+1)^2 = 1.21, clip=same
    assert loss.item() == pytest.approx(0.5 * (3.24 + 1.21) / 2)


# ---------------------------------------------------------------------------------------------------------- KL
def test_kl_penalty_is_per_token_and_the_reward_lands_on_the_stop_action():
    log_q = torch.tensor([[-1.0, -2.0, -0.5, 7.0], [-1.0, -1.0, 9.0, 9.0]])
    log_ref = torch.tensor([[-1.5, -1.0, -0.5, 0.0], [-2.0, -1.0, 0.0, 0.0]])
    lengths = torch.tensor([2, 1])
    rewards, kl = kl_penalised_rewards(torch.tensor([10.0, -3.0]), log_q, log_ref, lengths, kl_coef=0.1)
    assert torch.allclose(rewards, torch.tensor([[-0.05, 0.1, 10.0, 0.0], [-0.1, -3.0, 0.0, 0.0]]))
    assert torch.allclose(kl, torch.tensor([0.5 - 1.0 + 0.0, 1.0 + 0.0]))


def test_adaptive_kl_controller_moves_towards_the_target():
    assert adaptive_kl_coef(0.1, observed_kl=12.0, target=6.0, horizon=100, num_sequences=10) == pytest.approx(0.102)
    assert adaptive_kl_coef(0.1, observed_kl=3.0, target=6.0, horizon=100, num_sequences=10) == pytest.approx(0.098)
    assert adaptive_kl_coef(0.1, observed_kl=6.0, target=6.0, horizon=100, num_sequences=10) == pytest.approx(0.1)


def test_masked_whiten_normalises_only_the_masked_entries():
    x = torch.tensor([[1.0, 2.0, 100.0], [3.0, 100.0, 100.0]])
    mask = action_mask(torch.tensor([1, 0]), 3)
    w = masked_whiten(x, mask)
    vals = w[mask]
    assert vals.mean().item() == pytest.approx(0.0, abs=1e-6)
    assert vals.pow(2).mean().item() == pytest.approx(1.0, abs=1e-4)
    assert (w[~mask] == 0).all()


# ---------------------------------------------------------------------------------------------------------- trainer
def _trainer(tmp_path, steps, **kw):
    toy = exact_posterior_toy("suffix")
    defaults = dict(
        max_steps=steps, learning_rate=2e-3, warmup_steps=0, lr_scheduler_type="constant",
        per_device_train_batch_size=1, num_generations=16, max_completion_length=3, min_completion_length=1,
        logging_steps=1, save_strategy="no", report_to="none", use_cpu=True, disable_tqdm=True, seed=0,
    )
    defaults.update(kw)
    args = PPOConfig(str(tmp_path), **defaults)
    trainer = PPOTrainer(toy["model"], args, train_dataset=toy["dataset"], processing_class=toy["tokenizer"],
                         peft_config=LoraConfig(r=16, lora_alpha=32), vocab_mask=toy["vocab_mask"])
    return trainer, toy


def test_action_log_probs_sum_to_the_latent_log_probability(tmp_path):
    trainer, toy = _trainer(tmp_path, 1)
    tok = toy["tokenizer"]
    latents = toy["latents"][::7]
    model = trainer.accelerator.unwrap_model(trainer.model)
    prompt = tok(toy["dataset"][0]["prompt"])["input_ids"]
    want = exact_policy_log_probs(model, prompt, latents, trainer.constraints, tok.pad_token_id)
    from gfn_trl.sampling import right_pad

    z, lengths = right_pad(latents, trainer.constraints.stop_token_id)
    p_ids, p_mask = left_pad([prompt] * len(latents), tok.pad_token_id)
    log_pf, log_pterm = policy_log_probs(model, p_ids, p_mask, z, lengths, trainer.constraints)
    got = action_log_probs(log_pf, log_pterm, lengths).sum(1)
    assert torch.allclose(got, want, atol=1e-5)


def test_first_rollout_has_zero_kl_to_the_reference_and_sensible_advantages(tmp_path):
    trainer, _ = _trainer(tmp_path, 1)
    rows = [trainer.train_dataset[0]]
    inputs = trainer._prepare_inputs(rows)
    assert inputs["metrics"]["kl"].abs().item() < 1e-5  # LoRA starts at zero: policy == reference
    mask = inputs["mask"]
    assert mask.sum(1).tolist() == (inputs["lengths"] + 1).tolist()
    assert abs(inputs["advantages"][mask].mean().item()) < 1e-5  # whitened
    # the critic starts at the mean return, so values are finite and near the rewards
    final = inputs["log_r"].gather(1, inputs["lengths"][:, None]).squeeze(1)
    assert inputs["values"][:, 0].allclose(final.mean().expand(len(final)), atol=1e-4)
    # the same rollout is reused (not resampled) by the next num_ppo_epochs - 1 optimizer steps
    for step in range(1, trainer.args.num_ppo_epochs):
        trainer.state.global_step = step
        assert trainer._prepare_inputs(rows) is inputs
    trainer.state.global_step = trainer.args.num_ppo_epochs
    assert trainer._prepare_inputs(rows) is not inputs


def test_ppo_raises_the_expected_reward_on_the_toy(tmp_path):
    trainer, toy = _trainer(tmp_path, 100)
    log_r, log_q = exact_target_and_policy(trainer, toy)
    before = (log_q.exp() * log_r).sum().item()
    entropy_before = -(log_q.exp() * log_q).sum().item()
    trainer.train()
    log_r, log_q = exact_target_and_policy(trainer, toy)
    after = (log_q.exp() * log_r).sum().item()
    entropy_after = -(log_q.exp() * log_q).sum().item()
    assert after > before + 0.5, (before, after)  # E_q[log R] rises towards the best latent's
    assert entropy_after < entropy_before - 0.5  # and PPO gives up diversity to get there
    assert math.isfinite(trainer.state.log_history[-2]["ppo/value_loss"])


def test_ppo_resume_continues_exactly(tmp_path):
    full, _ = _trainer(tmp_path / "full", 6, num_ppo_epochs=3, save_strategy="no")
    full.train()
    first, _ = _trainer(tmp_path / "part", 4, num_ppo_epochs=3, save_strategy="steps", save_steps=4)
    first.train()
    resumed, _ = _trainer(tmp_path / "part", 6, num_ppo_epochs=3, save_strategy="no")
    resumed.train(resume_from_checkpoint=True)  # checkpoint-4 sits inside a rollout reused by steps 3..5
    a = {k: v for k, v in full.model.state_dict().items() if "lora" in k}
    b = {k: v for k, v in resumed.model.state_dict().items() if "lora" in k}
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-6), k
    assert torch.allclose(full.value_head.linear.weight, resumed.value_head.linear.weight, atol=1e-6)


def test_ppo_config_rejects_bad_values(tmp_path):
    with pytest.raises(ValueError, match="num_ppo_epochs"):
        PPOConfig(str(tmp_path), num_ppo_epochs=0)
    with pytest.raises(ValueError, match="gamma and lam"):
        PPOConfig(str(tmp_path), lam=1.5)
