"""The prepared GPU check (benchmarks/gpu_check.sh) rehearsed on a CPU: every step it will run on an H100/H200 runs
here with a tiny GPT-J, so that the one run a lent GPU allows does not fail on the script itself."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_check_dry_run_runs_every_step(tmp_path):
    env = dict(os.environ, GPU_CHECK_DRY_RUN="1", OUT=str(tmp_path), PYTHON=sys.executable,
               GPU_CHECK_WHEELS=str(tmp_path / "no-wheels"), OMP_NUM_THREADS="1")
    env["PATH"] = f"{Path(sys.executable).parent}:{env['PATH']}"
    proc = subprocess.run(["bash", str(ROOT / "benchmarks/gpu_check.sh")], env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    for step in ("adapter", "reward_8bit", "zero2", "zero3", "packed_reward"):
        assert f"== {step}: rc 0" in proc.stdout, proc.stdout

    runs = [json.loads(line) for line in (tmp_path / "gpu_check.jsonl").read_text().splitlines()]
    assert [(r["reward"], r["distributed"]) for r in runs] == [
        ("adapter", "NO"), ("8bit", "NO"), ("adapter", "DEEPSPEED"), ("adapter", "DEEPSPEED")]
    for r in runs:
        assert len(r["loss"]) == len(r["step_seconds"]) == 2
        assert all(math.isfinite(x) for x in r["loss"])
        assert r["versions"]["transformers"] and r["versions"]["peft"]
    adapter, reward_8bit, zero2, zero3 = runs
    # same seed, same batch: one-process ZeRO-2/3 train exactly like the plain run; the 8-bit reward LM (the same
    # weights, quantized) moves the loss a little
    for sharded in (zero2, zero3):
        assert sharded["loss"] == [pytest.approx(x, rel=1e-5) for x in adapter["loss"]]
    assert reward_8bit["loss"] != adapter["loss"]
    assert reward_8bit["loss"] == [pytest.approx(x, rel=1e-2) for x in adapter["loss"]]
    log = (tmp_path / "steps.log").read_text()
    assert "max |packed - naive|" in log and log.count("=====") == 5
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gpu_check.jsonl", "steps.log"]  # the tool returns <= 8
