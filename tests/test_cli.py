"""The `gfn-trl` command: tasks by name, shipped accelerate configs by name, the recipes' own help, a real run."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
GFN_TRL = shutil.which("gfn-trl", path=os.path.dirname(sys.executable))


def _cli(*args, timeout=120):
    assert GFN_TRL, "the gfn-trl console script is not installed: pip install -e ."
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run([GFN_TRL, *args], capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT)


def test_help_lists_every_task_and_does_not_load_torch():
    out = _cli("--help")
    assert out.returncode == 0, out.stderr
    for command in ("infill", "continuation", "subjectivity", "arithmetic", "compare", "--accelerate_config"):
        assert command in out.stdout
    # the command's own help must be instant: the package import is lazy
    probe = subprocess.run([sys.executable, "-c", "import sys, gfn_trl.cli; print('torch' in sys.modules)"],
                           capture_output=True, text=True)
    assert probe.stdout.strip() == "False"


def test_no_command_is_an_error_with_the_choices():
    out = _cli()
    assert out.returncode == 2 and "name a task or compare" in out.stderr and "infill" in out.stdout


@pytest.mark.parametrize(("name", "file"), [("zero3", "deepspeed_zero3.yaml"), ("zero2", "deepspeed_zero2.yaml"),
                                            ("fsdp2", "fsdp2.yaml"), ("cpu_2proc", "cpu_2proc.yaml")])
def test_named_accelerate_configs_resolve_to_the_shipped_files(name, file):
    out = _cli("infill", "--accelerate_config", name, "--dry_run", "--max_steps", "2")
    assert out.returncode == 0, out.stderr
    cmd = out.stdout.split()
    assert cmd[cmd.index("--config_file") + 1] == str(ROOT / "accelerate_configs" / file)
    assert cmd[-3:] == [str(ROOT / "recipes" / "infill.py"), "--max_steps", "2"]
    assert "launch" in cmd[:3]


def test_a_config_file_path_is_accepted_and_an_unknown_name_is_refused(tmp_path):
    mine = tmp_path / "mine.yaml"
    mine.write_text("distributed_type: NO\n")
    out = _cli("arithmetic", "--accelerate_config", str(mine), "--dry_run")
    assert out.returncode == 0 and str(mine) in out.stdout
    bad = _cli("arithmetic", "--accelerate_config", "zero4", "--dry_run")
    assert bad.returncode != 0
    assert "zero4" in bad.stderr and "zero3" in bad.stderr  # names the problem and the choices


def test_without_an_accelerate_config_one_local_process_is_said_explicitly():
    out = _cli("continuation", "--dry_run", "--trainer", "ppo")
    cmd = out.stdout.split()
    assert cmd[cmd.index("--num_processes") + 1] == "1" and "--config_file" not in cmd
    assert cmd[-3:] == [str(ROOT / "recipes" / "continuation.py"), "--trainer", "ppo"]


def test_compare_passes_the_accelerate_config_to_every_run():
    out = _cli("compare", "--accelerate_config", "cpu_2proc", "--dry_run", "--task", "infill", "--", "--seed", "1")
    assert out.returncode == 0, out.stderr
    assert "recipes/compare.py" in out.stdout and "--launcher" in out.stdout
    assert "accelerate_configs/cpu_2proc.yaml" in out.stdout and out.stdout.strip().endswith("-- --seed 1")


def test_task_help_is_the_recipes_own_help():
    out = _cli("subjectivity", "--help", timeout=300)
    assert out.returncode == 0, out.stderr
    assert "--trainer" in out.stdout and "--num_labelled" in out.stdout  # a subjectivity flag, so its own parser


def test_infill_help_shows_the_groups_and_only_infills_flags():
    out = _cli("infill", "--help", timeout=300)
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert text.startswith("usage: gfn-trl infill [--config FILE.yaml]")
    titles = ["task (infill):", "model (TRL's ModelConfig):", "algorithm (GFlowNetConfig):",
              "Trainer (transformers.TrainingArguments):"]
    where = [text.index(f"\n{t}\n") for t in titles]
    assert where == sorted(where)  # the four groups, in this order

    def group(title):  # the flags listed under one group's title
        start = text.index(f"\n{title}\n")
        end = min([text.index(f"\n{t}\n") for t in titles if text.index(f"\n{t}\n") > start] + [len(text)])
        return {line.split()[0] for line in text[start:end].splitlines() if line.startswith("  --")}

    assert {"--seed_gold", "--story_lm_steps", "--num_eval", "--ban_newlines"} <= group(titles[0])
    assert {"--model_name_or_path", "--use_peft", "--lora_r", "--load_in_4bit", "--attn_implementation",
            "--trust_remote_code", "--model_revision", "--dtype"} <= group(titles[1])
    assert {"--trainer", "--loss_type", "--replay_prob", "--reward_temperature_start"} <= group(titles[2])
    assert {"--learning_rate", "--max_steps", "--output_dir", "--report_to"} <= group(titles[3])
    assert "--trainer {gfn,ppo,grpo,rloo,sft}" in text
    for other in ("--num_labelled", "--calculator", "--decoding", "--strip_trailing_space", "--wishful_rationales"):
        assert other not in text  # other recipes' flags
    assert "  --no_" not in text and "--seed-gold" not in text  # one spelling per flag
    assert "--ban_newlines [{true,false}]" in text
    assert "(default: true)" in text and "(default: True)" not in text and "(default: False)" not in text
    ppo = _cli("infill", "--trainer", "ppo", "--help", timeout=300).stdout
    assert "algorithm (PPOConfig):" in ppo and "--kl_coef" in ppo and "--loss_type" not in ppo


SMALL = ["--max_steps", "1", "--num_eval", "1", "--eval_samples", "2", "--num_train", "1", "--num_generations", "2",
         "--max_completion_length", "6", "--logging_steps", "1", "--warmup_steps", "0"]


def test_compare_of_two_trainers_runs_through_the_cli(tmp_path):
    """`gfn-trl compare` end to end on a tiny local checkpoint: both runs, the table, the JSON, the plot."""
    from test_recipe_outputs import tiny_checkpoint

    tiny = tiny_checkpoint(tmp_path / "tiny")
    out_dir = tmp_path / "cmp"
    out = _cli("compare", "--task", "continuation", "--trainers", "gfn", "ppo", "--output_dir", str(out_dir), "--",
               "--model_name_or_path", str(tiny), *SMALL, "--use_cpu", "true", timeout=900)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "== compare: run 1/2 (gfn); 0s so far ==" in out.stdout and "== compare: run 2/2 (ppo);" in out.stdout
    assert "left ==" in out.stdout and "== compare: 2 runs done in" in out.stdout
    methods = json.loads((out_dir / "comparison.json").read_text())
    assert list(methods) == ["lm", "gfn", "ppo"]  # the untuned baseline from the first run, then each trainer
    for method in methods.values():
        assert method["log_likelihood/max"] < 0 and 0 <= method["diversity"] <= 2
    table = (out_dir / "comparison.md").read_text()
    assert table.startswith("### continuation") and "| gfn |" in table and "| ppo |" in table
    assert (out_dir / "comparison.png").read_bytes()[:4] == b"\x89PNG"
    for trainer in ("gfn", "ppo"):  # each run is a full recipe output directory
        assert (out_dir / trainer / "README.md").exists() and (out_dir / trainer / "trainer_state.json").exists()


@pytest.mark.slow
def test_compare_runs_through_the_cli(tmp_path):
    out_dir = tmp_path / "cmp"
    out = _cli("compare", "--task", "continuation", "--trainers", "gfn", "--output_dir", str(out_dir), "--", *SMALL,
               timeout=900)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    methods = json.loads((out_dir / "comparison.json").read_text())
    assert list(methods) == ["lm", "gfn"]
    assert methods["gfn"]["log_likelihood/max"] < 0
    assert (out_dir / "comparison.png").read_bytes()[:4] == b"\x89PNG"
