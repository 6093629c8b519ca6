"""recipes/compare.py: several trainers on one task, one table and one plot (CI-sized), and `--trainer` parsing."""

import json
import sys

import pytest

from gfn_trl.testing import load_recipe


@pytest.mark.parametrize("task", ["infill", "continuation", "subjectivity", "arithmetic"])
@pytest.mark.parametrize("trainer", ["gfn", "ppo", "grpo", "rloo", "sft"])
def test_every_recipe_parses_every_trainer(task, trainer):
    from trl import GRPOConfig, RLOOConfig, SFTConfig

    from gfn_trl import GFlowNetConfig, PPOConfig

    module = load_recipe(task)
    parsed = module.make_parser(["--trainer", trainer]).parse_args_into_dataclasses(["--trainer", trainer])
    recipe, args = parsed[0], parsed[1]
    want = {"gfn": GFlowNetConfig, "ppo": PPOConfig, "grpo": GRPOConfig, "rloo": RLOOConfig, "sft": SFTConfig}[trainer]
    assert recipe.trainer == trainer and isinstance(args, want)
    assert args.min_completion_length == module.CPU_DEFAULTS["min_completion_length"]
    assert not args.bf16  # no CPU autocast behind the user's back
    if trainer in ("grpo", "rloo"):  # TRL counts completions: the same prompts x samples per step as the GFlowNet
        want_batch = module.CPU_DEFAULTS["per_device_train_batch_size"] * module.CPU_DEFAULTS["num_generations"]
        assert args.per_device_train_batch_size == want_batch
    if trainer != "gfn":
        assert args.output_dir.endswith(f"-{trainer}")


@pytest.mark.parametrize("trainer", ["gfn", "ppo", "grpo", "rloo", "sft"])
@pytest.mark.parametrize("launcher", [None, "no", "bf16"])
def test_unset_bf16_is_off_on_a_cpu_whatever_the_launcher_says(trainer, launcher, monkeypatch):
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)  # also where the test machine has a GPU
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    if launcher is None:
        monkeypatch.delenv("ACCELERATE_MIXED_PRECISION", raising=False)
    else:
        monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", launcher)
    argv = ["--trainer", trainer]
    args = load_recipe("continuation").make_parser(argv).parse_args_into_dataclasses(argv)[1]
    assert args.bf16 is False  # transformers refuses bf16 on a CPU without use_cpu


@pytest.mark.parametrize(("cuda_bf16", "deepspeed", "launcher", "fp16", "want"), [
    (True, False, None, False, True),
    (True, False, "no", False, True),  # a bare `accelerate launch` says "no": the arguments decide, as in TRL
    (True, True, "bf16", False, True),  # accelerate_configs/deepspeed_*.yaml
    (True, True, "fp8", False, True),  # DeepSpeed runs fp8 launches in bf16
    (True, True, "no", False, False),  # an fp32 DeepSpeed launch refuses bf16 arguments
    (True, True, "fp16", False, False),
    (True, False, None, True, False),
    (False, True, "bf16", False, False),
])
def test_resolve_bf16_on_a_gpu_follows_deepspeed_launches(cuda_bf16, deepspeed, launcher, fp16, want, monkeypatch):
    # the GPU side cannot run here: stand in for the device's capability only
    from types import SimpleNamespace

    from gfn_trl.config import resolve_bf16

    monkeypatch.setattr("torch.cuda.is_available", lambda: cuda_bf16)
    monkeypatch.setattr("torch.cuda.is_bf16_supported", lambda *a, **k: cuda_bf16)
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true" if deepspeed else "false")
    if launcher is None:
        monkeypatch.delenv("ACCELERATE_MIXED_PRECISION", raising=False)
    else:
        monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", launcher)
    config = SimpleNamespace(bf16=None, fp16=fp16)
    resolve_bf16(config)
    assert config.bf16 is want
    explicit = SimpleNamespace(bf16=False, fp16=False)
    resolve_bf16(explicit)
    assert explicit.bf16 is False


def test_unknown_trainer_is_refused_with_the_choices():
    module = load_recipe("infill")
    with pytest.raises(ValueError, match="gfn, ppo, grpo, rloo, sft"):
        module.make_parser(["--trainer", "dpo"])


def test_sft_without_gold_latents_is_refused(tmp_path, monkeypatch):
    module = load_recipe("continuation")
    argv = ["--trainer", "sft", "--output_dir", str(tmp_path), "--max_steps", "1"]
    recipe, args = module.make_parser(argv).parse_args_into_dataclasses(argv)
    with pytest.raises(ValueError, match="gold latents"):
        module.main(recipe, args)


SMALL = ["--max_steps", "1", "--num_eval", "1", "--eval_samples", "2", "--num_train", "1", "--num_generations", "2",
         "--max_completion_length", "6", "--logging_steps", "1", "--warmup_steps", "0"]


@pytest.mark.slow
def test_compare_runs_trainers_and_writes_table_and_plot(tmp_path, monkeypatch):
    # one of ours and one of TRL's (PPO and SFT run in the recipe tests below, RLOO in test_baselines), to keep CI short
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    compare = load_recipe("compare")
    out = tmp_path / "cmp"
    # GRPO's 8 completions a step are 4 prompts x 2: 4 training prompts (with fewer, TRL trains zero steps; refused)
    small = [*SMALL[:SMALL.index("--num_train") + 1], "4", *SMALL[SMALL.index("--num_train") + 2 :]]
    methods = compare.main(["--task", "continuation", "--trainers", "gfn", "grpo",
                            "--decoding", "greedy", "beam", "--output_dir", str(out), "--", *small])
    assert list(methods) == ["lm", "greedy", "beam", "gfn", "grpo"]
    for values in methods.values():
        assert {"diversity", "log_likelihood/max", "log_likelihood/mean"} <= set(values)
        assert values["log_likelihood/max"] < 0
    assert methods["greedy"]["diversity"] == pytest.approx(0.0, abs=1e-6)  # one latent, repeated
    table = (out / "comparison.md").read_text()
    assert all(f"| {m} |" in table for m in methods)
    assert (out / "comparison.png").read_bytes()[:4] == b"\x89PNG"
    assert json.loads((out / "comparison.json").read_text()) == methods
    # --collect re-reads the same runs without training again
    assert compare.main(["--task", "continuation", "--trainers", "gfn", "grpo", "--collect",
                         "--output_dir", str(out)]) == methods


@pytest.mark.slow
@pytest.mark.parametrize("task,trainer", [("infill", "sft"), ("arithmetic", "sft"), ("subjectivity", "ppo")])
def test_baseline_trainers_run_the_task_recipes(task, trainer, tmp_path, monkeypatch):
    module = load_recipe(task)
    argv = ["--trainer", trainer, "--output_dir", str(tmp_path), "--skip_baseline", "true", *SMALL]
    if task == "subjectivity":  # draws its training set with --num_labelled
        i = argv.index("--num_train")
        argv = argv[:i] + argv[i + 2 :] + ["--num_labelled", "2", "--wishful_rationales", "0"]
    if task == "arithmetic":  # and a short rationale-LM stage
        argv += ["--max_completion_length", "31", "--eval_samples", "1", "--rationale_lm_steps", "1",
                 "--num_rationale", "4", "--rationale_lm_cache", str(tmp_path / "cache")]
    if task == "infill":  # a short story-LM stage
        argv += ["--story_lm_steps", "1"]
    if trainer == "sft":  # SFT samples nothing while training
        i = argv.index("--num_generations")
        argv = argv[:i] + argv[i + 2 :]
    monkeypatch.setattr(sys, "argv", [f"{task}.py", *argv])
    parsed = module.make_parser().parse_args_and_config()
    metrics = module.main(*parsed)
    assert set(metrics) == {trainer}
    saved = json.loads((tmp_path / "metrics.json").read_text())["metrics"]
    assert saved == json.loads(json.dumps(metrics))
    assert (tmp_path / "adapter_model.safetensors").exists()
