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
        argv = argv[:i] + argv[i + 2 :] + ["--num_labelled", "2", "--wishful_rationales", "0", "--m_step_steps", "0"]
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


def test_compare_over_seeds_reports_mean_and_sd_of_real_runs(tmp_path, monkeypatch):
    """`--seeds 0 1`: one full comparison per seed into OUT/seed_S (each with `--seed S`), then mean ± sd over the
    seeds of every method's metrics, computed from the seeds' own metrics.json; the seed must change the runs."""
    import statistics

    from test_recipe_outputs import tiny_checkpoint

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    compare = load_recipe("compare")
    tiny = tiny_checkpoint(tmp_path / "tiny")
    out = tmp_path / "cmp"
    args = ["--task", "continuation", "--trainers", "gfn", "--output_dir", str(out), "--seeds", "0", "1", "--",
            "--model_name_or_path", str(tiny), *SMALL, "--use_cpu", "true"]
    result = compare.main(args)
    per_seed = {s: json.loads((out / f"seed_{s}" / "gfn" / "metrics.json").read_text())["metrics"] for s in (0, 1)}
    for s in (0, 1):  # every run of the seed was given that seed
        state = json.loads((out / f"seed_{s}" / "gfn" / "trainer_state.json").read_text())
        assert json.loads((out / f"seed_{s}" / "comparison.json").read_text())["gfn"] == per_seed[s]["gfn"]
        assert (out / f"seed_{s}" / "gfn" / "README.md").exists() and state["global_step"] == 1
        command = json.loads((out / f"seed_{s}" / "gfn" / "command.json").read_text())
        assert command["command"].endswith(f"--seed {s}") and command["wall_seconds"] > 0
        assert "Wall time per run: gfn " in (out / f"seed_{s}" / "comparison.md").read_text()
    assert per_seed[0]["gfn"]["log_likelihood/mean"] != per_seed[1]["gfn"]["log_likelihood/mean"]
    assert per_seed[0]["lm"]["log_likelihood/mean"] != per_seed[1]["lm"]["log_likelihood/mean"]
    record = json.loads((out / "comparison.json").read_text())
    assert record["seeds"] == [0, 1] and list(record["mean"]) == ["lm", "gfn"]
    for method in ("lm", "gfn"):
        for key, values in ((k, [per_seed[s][method][k] for s in (0, 1)]) for k in per_seed[0][method]):
            assert record["mean"][method][key] == pytest.approx(statistics.mean(values), abs=1e-12)
            assert record["sd"][method][key] == pytest.approx(statistics.stdev(values), abs=1e-12)
            assert result["mean"][method][key] == record["mean"][method][key]
    table = (out / "comparison.md").read_text()
    m, sd = record["mean"]["gfn"]["diversity"], record["sd"]["gfn"]["diversity"]
    assert "mean ± sd over 2 seeds (0, 1)" in table and f"{m:.4f} ± {sd:.4f}" in table and "| gfn | 1 |" in table
    assert (out / "comparison.png").read_bytes()[:4] == b"\x89PNG"
    # --collect re-reads the seeds without running; a seed with a missing run is named
    assert compare.main([*args[:args.index("--")], "--collect"])["mean"] == result["mean"]
    seed_0_record = (out / "seed_0" / "gfn" / "command.json").read_text()
    (out / "seed_1" / "gfn" / "metrics.json").unlink()
    with pytest.raises(SystemExit, match="seed_1/gfn/metrics.json is missing"):
        compare.main([*args[:args.index("--")], "--collect"])
    # --resume re-runs only the unfinished seed (seed 0's record is untouched), and the re-run reproduces its metrics
    resumed = compare.main([*args[:args.index("--")], "--resume", *args[args.index("--"):]])
    assert (out / "seed_0" / "gfn" / "command.json").read_text() == seed_0_record
    assert json.loads((out / "seed_1" / "gfn" / "metrics.json").read_text())["metrics"] == per_seed[1]
    assert resumed["mean"] == result["mean"]
    # a run with other arguments is another run: --resume would run it again
    argv = compare.recipe_argv("gfn", out / "seed_0", [*args[args.index("--") + 1:], "--seed", "0"], True, [])
    assert compare.finished_run(out / "seed_0", "gfn", argv, "continuation")
    assert not compare.finished_run(out / "seed_0", "gfn", [*argv, "--max_completion_length", "5"], "continuation")
    assert not compare.finished_run(out / "seed_0", "gfn", [*argv[:-1], "1"], "continuation")


def _fake_recipe_launcher(tmp_path):
    """A launcher (no .py in its name) that ignores the recipe and writes OUTPUT_DIR/metrics.json with the run's
    arguments, then exits with $FAKE_EXIT (default 0): a recipe run without a model."""
    launcher = tmp_path / "fake_launcher"
    launcher.write_text(f"#!{sys.executable}\n"
                        "import json, os, sys\n"
                        "argv = sys.argv[2:]\n"
                        "out = argv[argv.index('--output_dir') + 1]\n"
                        "os.makedirs(out, exist_ok=True)\n"
                        "trainer = argv[argv.index('--trainer') + 1]\n"
                        "open(os.path.join(out, 'metrics.json'), 'w').write(json.dumps({'metrics': {trainer: {'args': "
                        "len(argv)}}}))\n"
                        "sys.exit(int(os.environ.get('FAKE_EXIT', '0')))\n")
    launcher.chmod(0o755)
    return [str(launcher)]


def test_resume_skips_only_a_run_whose_metrics_its_record_vouches_for(tmp_path, monkeypatch):
    """--resume skipped a run whose command.json matched while its metrics.json was another run's: one made by hand
    into the same directory afterwards, or a compare.py run with other arguments that wrote metrics.json and then
    failed (or was killed) before its record.  The record now goes before each run and holds the metrics' digest; a
    record from before the digest vouches for a metrics.json no newer than itself."""
    import os

    compare = load_recipe("compare")
    launcher, out = _fake_recipe_launcher(tmp_path), tmp_path / "cmp"
    x, y = ["--max_steps", "4"], ["--max_steps", "8"]
    argv = compare.recipe_argv("gfn", out, x, True, [])
    assert compare.run_one("infill", "gfn", out, launcher, x, True, [], resume=True)
    assert compare.finished_run(out, "gfn", argv, "infill")
    assert not compare.run_one("infill", "gfn", out, launcher, x, True, [], resume=True)  # skipped
    # a run made by hand into the same directory (other arguments) rewrites metrics.json, not command.json
    (out / "gfn" / "metrics.json").write_text(json.dumps({"metrics": {"gfn": {"args": 99}}}))
    assert not compare.finished_run(out, "gfn", argv, "infill")
    assert compare.run_one("infill", "gfn", out, launcher, x, True, [], resume=True)  # made again
    # a compare.py run with other arguments writes its metrics.json, then fails: no record vouches for them
    monkeypatch.setenv("FAKE_EXIT", "1")
    with pytest.raises(SystemExit, match="gfn failed"):
        compare.run_one("infill", "gfn", out, launcher, y, True, [], resume=True)
    assert not (out / "gfn" / "command.json").exists() and not compare.finished_run(out, "gfn", argv, "infill")
    monkeypatch.delenv("FAKE_EXIT")
    compare.run_one("infill", "gfn", out, launcher, x, True, [])
    # a record from before the digest: the metrics.json must be no newer than the record
    record = out / "gfn" / "command.json"
    old = json.loads(record.read_text())
    del old["metrics_sha256"]
    record.write_text(json.dumps(old))
    t = record.stat().st_mtime
    os.utime(out / "gfn" / "metrics.json", (t - 10, t - 10))
    assert compare.finished_run(out, "gfn", argv, "infill")
    os.utime(out / "gfn" / "metrics.json", (t + 10, t + 10))
    assert not compare.finished_run(out, "gfn", argv, "infill")


def test_a_launcher_with_a_py_of_its_own_is_not_taken_for_the_recipe(tmp_path):
    """The recipe's arguments were read after the command's first .py: a launcher such as "python wrap.py" made
    --resume rerun every finished run (the recipe's path counted as an argument) and --collect refuse seeds run from
    two checkouts as different commands."""
    compare = load_recipe("compare")
    out = tmp_path / "cmp"
    argv = compare.recipe_argv("gfn", out, ["--max_steps", "4"], True, [])
    (out / "gfn").mkdir(parents=True)
    (out / "gfn" / "metrics.json").write_text(json.dumps({"metrics": {"gfn": {"bleu4": 0.1}}}))
    command = f"python /opt/wrap.py /a/recipes/infill.py {' '.join(argv)}"
    (out / "gfn" / "command.json").write_text(json.dumps({"command": command, "wall_seconds": 1.0}))
    assert compare.recipe_args(command) == argv and compare.finished_run(out, "gfn", argv, "infill")
    elsewhere = command.replace("/a/recipes", "/b/recipes").replace("--max_steps 4", "--max_steps 4 --seed 1")
    assert compare._normalised_command(elsewhere) == compare._normalised_command(f"{command} --seed 0")
    assert compare.recipe_args("python infill.py --x 1") == ["--x", "1"]  # no --trainer: after the .py


def test_time_left_counts_only_the_runs_resume_will_make(tmp_path, monkeypatch):
    """The estimate of the time left multiplied the mean time of the runs made by every run left, those --resume
    would skip too: with a trainer added to a finished --seeds comparison, twice the time left after the first seed's
    new run.  It counts the runs still to make."""
    compare = load_recipe("compare")
    labels = ["gfn, seed 0", "ppo, seed 0", "gfn, seed 1", "ppo, seed 1"]
    assert compare.run_header(2, labels, 60, ran=1, left=1) == ("== compare: run 3/4 (gfn, seed 1); 1m00s so far, "
                                                                "about 1m00s left ==")
    assert compare.run_header(2, labels, 60, ran=1, left=0).endswith("1m00s so far ==")  # nothing left to make
    assert compare.run_header(2, labels, 60) == "== compare: run 3/4 (gfn, seed 1); 1m00s so far, about 1m00s left =="
    launcher, out = _fake_recipe_launcher(tmp_path), tmp_path / "cmp"
    monkeypatch.setattr(compare, "check_runs", lambda *a: None)
    args = ["--task", "infill", "--output_dir", str(out), "--launcher", launcher[0], "--seeds", "0", "1"]
    compare.main([*args, "--trainers", "gfn"])
    headers = []
    monkeypatch.setattr(compare, "run_header", lambda i, labels, elapsed, ran=None, left=None:
                        headers.append((i, ran, left)) or "")
    compare.main([*args, "--trainers", "gfn", "ppo", "--resume"])  # the gfn runs are skipped
    assert headers == [(0, 0, 2), (1, 0, 2), (2, 1, 1), (3, 1, 1)]


def test_compare_seeds_refuses_a_seed_in_the_run_arguments(capsys):
    compare = load_recipe("compare")
    with pytest.raises(SystemExit):
        compare.main(["--task", "infill", "--trainers", "gfn", "--seeds", "0", "1", "--", "--seed", "3"])
    assert "--seeds sets every run's --seed" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        compare.main(["--task", "infill", "--trainers", "gfn", "--seeds", "0", "0"])
    assert "repeats a seed" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # --collect runs nothing: --resume would do nothing, silently
        compare.main(["--task", "infill", "--trainers", "gfn", "--collect", "--resume"])
    assert "--resume runs the runs that are missing or stale, --collect runs none" in capsys.readouterr().err
    for seeds, message in ((["3"], "one seed has no spread"), (["0", "-1"], "0 .. 2**32 - 1"),
                           (["0", str(2**32)], "0 .. 2**32 - 1")):
        with pytest.raises(SystemExit):  # refused before any run, not a NaN sd or a crash at the last seed's start
            compare.main(["--task", "infill", "--trainers", "gfn", "--seeds", *seeds])
        assert message in capsys.readouterr().err


def test_collect_refuses_seeds_run_with_different_commands(tmp_path):
    """--collect over seeds whose runs had other arguments (apart from --seed and --output_dir) is refused, naming
    both commands, before anything is written; the same arguments are collected."""
    compare = load_recipe("compare")
    out = tmp_path / "cmp"
    for s, steps in ((0, 4), (1, 8)):
        run = out / f"seed_{s}" / "gfn"
        run.mkdir(parents=True)
        (run / "metrics.json").write_text(json.dumps({"metrics": {"gfn": {"bleu4": 0.1 * (s + 1)}}}))
        (run / "command.json").write_text(json.dumps({"command": f"python infill.py --trainer gfn --output_dir "
                                                      f"{run} --max_steps {steps} --seed {s}", "wall_seconds": 1.0}))
    args = ["--task", "infill", "--trainers", "gfn", "--output_dir", str(out), "--seeds", "0", "1", "--collect"]
    with pytest.raises(SystemExit, match="seeds 0 and 1 had different commands"):
        compare.main(args)
    assert not list(out.rglob("comparison.*"))
    cmd = json.loads((out / "seed_1" / "gfn" / "command.json").read_text())
    cmd["command"] = cmd["command"].replace("--max_steps 8", "--max_steps 4").replace("python infill.py",
                                                                                      "/venv/python /x/infill.py")
    (out / "seed_1" / "gfn" / "command.json").write_text(json.dumps(cmd))
    assert compare.main(args)["mean"]["gfn"]["bleu4"] == pytest.approx(0.15)


def test_aggregate_refuses_seeds_whose_methods_differ():
    compare = load_recipe("compare")
    with pytest.raises(ValueError, match="Seed 1 has no value of bleu4 for gfn"):
        compare.aggregate({0: {"gfn": {"bleu4": 0.1}}, 1: {"gfn": {"gleu4": 0.2}}})
    with pytest.raises(ValueError, match="Seed 1 has methods"):
        compare.aggregate({0: {"gfn": {"bleu4": 0.1}}, 1: {"gfn": {"bleu4": 0.2}, "sft": {"bleu4": 0.3}}})
    with pytest.raises(ValueError, match="Seed 1 has metrics"):  # a metric only a later seed has is not dropped
        compare.aggregate({0: {"gfn": {"bleu4": 0.1}}, 1: {"gfn": {"bleu4": 0.2, "gleu4": 0.3}}})


def test_collect_keeps_the_methods_a_trainer_derives_wherever_it_is_listed(tmp_path):
    """A run's derived methods (`<trainer>_...`, e.g. subjectivity's gfn_m_step) follow their trainer whether it runs
    first or not; the baselines come from the first run only."""
    compare = load_recipe("compare")
    runs = {"sft": {"zero_shot": {"accuracy": 0.5}, "sft": {"accuracy": 0.9}},
            "gfn": {"zero_shot": {"accuracy": 0.6}, "gfn": {"accuracy": 0.7}, "gfn_m_step": {"accuracy": 0.95}}}
    for trainer, metrics in runs.items():
        (tmp_path / trainer).mkdir()
        (tmp_path / trainer / "metrics.json").write_text(json.dumps({"metrics": metrics}))
    assert compare.collect(tmp_path, ["sft", "gfn"]) == {"zero_shot": {"accuracy": 0.5}, "sft": {"accuracy": 0.9},
                                                        "gfn": {"accuracy": 0.7}, "gfn_m_step": {"accuracy": 0.95}}
    assert list(compare.collect(tmp_path, ["gfn", "sft"])) == ["zero_shot", "gfn", "gfn_m_step", "sft"]


def test_resume_and_collect_refuse_another_tasks_run_in_the_directory(tmp_path, monkeypatch):
    """The recorded command's recipe arguments (from --trainer on) do not name the task: --resume skipped a finished
    continuation run in OUT/gfn for an infill comparison into the same --output_dir with the same arguments, and the
    infill table then held the continuation run's metrics, without a word.  The recipe the record names must be the
    task's; a comparison into another task's runs is refused before any run (they are not overwritten), and so is
    --collect, naming both."""
    compare = load_recipe("compare")
    launcher, out = _fake_recipe_launcher(tmp_path), tmp_path / "cmp"
    extra = ["--max_steps", "4"]
    argv = compare.recipe_argv("gfn", out, extra, True, [])
    assert compare.run_one("continuation", "gfn", out, launcher, extra, True, [])
    assert compare.finished_run(out, "gfn", argv, "continuation")
    assert not compare.finished_run(out, "gfn", argv, "infill")
    assert compare.recipe_of(f"python /opt/wrap.py /a/recipes/infill.py {' '.join(argv)}") == "infill.py"
    monkeypatch.setattr(compare, "check_runs", lambda *a: None)
    args = ["--task", "infill", "--trainers", "gfn", "--output_dir", str(out), "--launcher", launcher[0]]
    before = (out / "gfn" / "command.json").read_text()
    for flags, action in ((["--resume"], "--resume would overwrite it"), ([], "it would be overwritten"),
                          (["--collect"], "its metrics are not this comparison's")):
        with pytest.raises(SystemExit, match=rf"holds a run of continuation\.py, not of infill\.py \(--task infill\): "
                                             f"{action}"):
            compare.main([*args, *flags, "--", *extra])
    assert (out / "gfn" / "command.json").read_text() == before and not (out / "comparison.md").exists()
    compare.main(["--task", "continuation", *args[2:], "--resume", "--", *extra])  # its own task: skipped, collected
    assert (out / "gfn" / "command.json").read_text() == before and (out / "comparison.md").exists()


def test_an_unreadable_record_or_metrics_file_is_named_not_a_traceback(tmp_path, monkeypatch, capsys):
    """A truncated or hand-broken command.json made --resume and --collect die on a JSONDecodeError that named no
    file; a truncated metrics.json (a run killed while saving) did the same in --collect.  --resume now makes such a
    run again (saying why); --collect names the file and the fix."""
    compare = load_recipe("compare")
    launcher, out = _fake_recipe_launcher(tmp_path), tmp_path / "cmp"
    extra = ["--max_steps", "4"]
    argv = compare.recipe_argv("gfn", out, extra, True, [])
    compare.run_one("infill", "gfn", out, launcher, extra, True, [])
    record = out / "gfn" / "command.json"
    good = record.read_text()
    for broken in (good[: len(good) // 2], "[1, 2]", '{"wall_seconds": 1.0}', ""):
        record.write_text(broken)
        assert not compare.finished_run(out, "gfn", argv, "infill")
        assert "cannot be read" in capsys.readouterr().out
        with pytest.raises(SystemExit, match=r"command\.json cannot be read.*--resume"):
            compare.run_times(out, ["gfn"])
    monkeypatch.setattr(compare, "check_runs", lambda *a: None)
    args = ["--task", "infill", "--trainers", "gfn", "--output_dir", str(out), "--launcher", launcher[0]]
    compare.main([*args, "--resume", "--", *extra])  # made again
    assert json.loads(record.read_text())["command"].endswith("--max_steps 4")
    metrics = out / "gfn" / "metrics.json"
    metrics.write_text(metrics.read_text()[:10])
    with pytest.raises(SystemExit, match=r"metrics\.json cannot be read .*rerun"):
        compare.main([*args, "--collect"])
    metrics.write_text("[]")
    with pytest.raises(SystemExit, match=r"metrics\.json cannot be read"):
        compare.collect(out, ["gfn"])


def test_collect_refuses_a_run_made_without_compare_whose_metrics_name_another_task(tmp_path):
    """A run made by hand into OUT/<trainer> has no command.json to name its recipe: --collect put another task's
    metrics into this task's table.  metrics.json now names its task (the recipes write it), and --collect refuses
    another task's; a metrics.json from before (no task) is collected as before."""
    from transformers import TrainingArguments

    from gfn_trl.runner import RecipeArguments
    from gfn_trl.runner.outputs import write_outputs

    compare = load_recipe("compare")
    run = tmp_path / "gfn"
    write_outputs(str(run), {"gfn": {"diversity": 0.5}}, [], RecipeArguments(),
                  TrainingArguments(str(run), report_to="none"), task="continuation")
    assert json.loads((run / "metrics.json").read_text())["task"] == "continuation"
    assert compare.collect(tmp_path, ["gfn"], "continuation") == {"gfn": {"diversity": 0.5}}
    with pytest.raises(SystemExit, match=r"holds a continuation run's metrics, not infill's \(--task infill\)"):
        compare.collect(tmp_path, ["gfn"], "infill")
    (run / "metrics.json").write_text(json.dumps({"metrics": {"gfn": {"bleu4": 0.1}}}))
    assert compare.collect(tmp_path, ["gfn"], "infill") == {"gfn": {"bleu4": 0.1}}


def test_a_repeated_trainer_is_refused_before_any_run(tmp_path, capsys):
    """`--trainers gfn gfn` ran gfn twice into OUT/gfn: the second run (--skip_baseline true) overwrote the first's
    metrics.json, and the table lost the baselines without a word.  Refused before any run, like a repeated seed."""
    compare = load_recipe("compare")
    with pytest.raises(SystemExit):
        compare.main(["--task", "infill", "--trainers", "gfn", "sft", "gfn", "--output_dir", str(tmp_path)])
    assert "--trainers gfn sft gfn repeats a trainer" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_run_flags_compare_sets_are_refused_after_the_separator(tmp_path, capsys):
    """`-- --output_dir D` or `-- --trainer ppo` went to every run after compare.py's own --output_dir OUT/<trainer>
    and --trainer T, and the recipe took the last: every run trained ppo, or wrote into D over the others, and the
    comparison failed only at the end ("metrics.json is missing") or tabulated the wrong trainer.  Refused before any
    run, naming the flag to use."""
    compare = load_recipe("compare")
    for extra, flag in ((["--output_dir", str(tmp_path / "d")], "--output_dir"), (["--trainer=ppo"], "--trainer"),
                        (["--decoding", "greedy"], "--decoding")):
        with pytest.raises(SystemExit):
            compare.main(["--task", "continuation", "--trainers", "gfn", "sft", "--output_dir", str(tmp_path / "o"),
                          "--", "--max_steps", "1", *extra])
        assert f"{flag} after --: compare.py sets each run's" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())
