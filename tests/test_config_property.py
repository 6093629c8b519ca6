"""Property (issue 12, kind 2): any value of a numeric setting, NaN, ±inf and negatives included, is either refused
when the config is built, with the field named, or trains (one step on a tiny model) with a finite loss."""

from __future__ import annotations

import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gfn_trl import GFlowNetConfig

FLOAT_FIELDS = [
    "subtb_lambda", "log_z_learning_rate", "on_policy_prob", "tempered_prob", "replay_prob",
    "sampling_temperature_min", "sampling_temperature_max", "reward_temperature_start", "reward_temperature_end",
    "replay_sim_tolerance", "contrast_penalty", "learning_rate", "weight_decay", "adam_epsilon", "max_grad_norm",
]
INT_FIELDS = ["max_completion_length", "min_completion_length", "num_generations", "reward_chunk_size",
              "reward_temperature_horizon", "replay_buffer_size"]

special = st.sampled_from([math.nan, math.inf, -math.inf, 0.0, -0.0, -1.0, 1e-300, 1e300, 1e-20, 0.5, 1.0, 2.0])
floats = st.one_of(special, st.floats(allow_nan=True, allow_infinity=True), st.floats(-10, 10))
ints = st.one_of(st.sampled_from([-2, -1, 0, 1, 2, 3]), st.integers(-10**6, 10**6))
draws = st.one_of(st.tuples(st.sampled_from(FLOAT_FIELDS), floats), st.tuples(st.sampled_from(INT_FIELDS), ints))


# derandomize: CI draws the same 20 examples every run (a failure reproduces; no draw is left to chance)
@settings(max_examples=20, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(draws)
def test_a_setting_is_refused_naming_it_or_trains_finitely(tmp_path_factory, draw):
    from datasets import Dataset
    from peft import LoraConfig

    from gfn_trl import GFlowNetTrainer
    from gfn_trl.testing import tiny_model, tiny_tokenizer

    name, value = draw
    out = tmp_path_factory.mktemp("run")
    base = dict(output_dir=str(out), max_steps=1, per_device_train_batch_size=2, num_generations=3,
                max_completion_length=4, min_completion_length=1, warmup_steps=0, logging_steps=1,
                save_strategy="no", report_to="none", use_cpu=True, disable_tqdm=True, seed=1)
    kwargs = {**base, name: value}
    if name in ("on_policy_prob", "tempered_prob", "replay_prob"):  # keep the others summing to 1 - value if they can
        rest = [f for f in ("on_policy_prob", "tempered_prob", "replay_prob") if f != name]
        if isinstance(value, float) and 0 <= value <= 1:
            kwargs.update({rest[0]: 1 - value, rest[1]: 0.0})
    try:
        args = GFlowNetConfig(**kwargs)
    except ValueError as e:
        named = name in str(e) or (name.endswith("_prob") and "on_policy_prob, tempered_prob and replay_prob" in str(e))
        assert named, (name, value, str(e))
        return
    if name in ("max_completion_length", "num_generations") and value > 64:
        # valid, and accepted above; but training with them (up to 10^6 latents per prompt) would only measure this
        # machine's memory (a random draw of num_generations=10^6 was OOM-killed at 24 GB)
        return
    tok = tiny_tokenizer()
    data = Dataset.from_dict({"prompt": ["the cat", "a dog"], "suffix": ["sat .", "ran ."]})
    trainer = GFlowNetTrainer(tiny_model("gpt2", len(tok)), args, train_dataset=data, processing_class=tok,
                              peft_config=LoraConfig(r=4))
    trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert losses and all(math.isfinite(x) for x in losses), (name, value, losses)


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, -1.0])
def test_the_examples_of_the_issue(tmp_path, value):
    for name in ("subtb_lambda", "on_policy_prob", "sampling_temperature_max", "log_z_learning_rate"):
        with pytest.raises(ValueError, match=name):
            GFlowNetConfig(str(tmp_path), **{name: value})
