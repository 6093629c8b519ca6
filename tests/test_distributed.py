"""Two processes (accelerate launch, gloo on CPU) train exactly like one process with the same global batch.

Rollout randomness is counter-based (a function of seed, step, prompt and sample index), so both runs draw the same
latents. With TB, whose loss is a mean over trajectories, the two-process gradient (DDP's mean of per-rank means over
equal shares) equals the one-process one: we require equal losses, rewards and weights to 1e-5. (SubTB normalises by
the number of windows per process, which differs between ranks, so there the runs agree on latents and rewards but the
loss differs by a few percent: see the README.)
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "tests" / "scripts" / "ddp_train.py"
CONFIG = ROOT / "accelerate_configs" / "cpu_2proc.yaml"


def _launch(out, per_device, loss, *extra, processes=2, config=CONFIG):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    if "zero" in Path(config).name:  # DeepSpeed on CPU
        env.update(DS_ACCELERATOR="cpu", GFN_TEST_DEEPSPEED="1")
    if processes == 1:
        cmd = [sys.executable, str(SCRIPT), str(out), str(per_device), loss, *extra]
    else:
        accelerate = shutil.which("accelerate", path=os.path.dirname(sys.executable)) or "accelerate"
        cmd = [accelerate, "launch", "--config_file", str(config), str(SCRIPT), str(out), str(per_device), loss, *extra]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    name = "result_resume.json" if "resume" in extra else "result.json"
    return json.loads((Path(out) / name).read_text())


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("ddp")
    one = _launch(base / "one", 2, "tb", processes=1)
    two = _launch(base / "two", 1, "tb")
    resumed = _launch(base / "two", 1, "tb", "resume")
    return base, one, two, resumed


def _close(a, b, tol=1e-5):
    return all(abs(x - y) <= tol * max(1.0, abs(x)) for x, y in zip(a, b))


def test_two_processes_match_one_process_with_the_same_global_batch(runs):
    _, one, two, _ = runs
    assert one["world_size"] == 1 and two["world_size"] == 2
    assert len(one["losses"]) == len(two["losses"]) == 6
    assert _close(one["log_reward"], two["log_reward"])  # the same latents were drawn
    # the replay buffer is shared across ranks: same size as one process's, and replay steps happen on both
    assert one["replay"] == two["replay"] and 1.0 in one["replay"]
    assert one["buffer_size"] == two["buffer_size"]
    assert _close(one["losses"], two["losses"]), (one["losses"], two["losses"])
    for k in one["weights"]:
        assert _close(one["weights"][k], two["weights"][k]), k


def test_two_process_checkpoints_resume(runs):
    base, _, two, resumed = runs
    ckpt = base / "two" / "checkpoint-3"
    assert (ckpt / "gfn_state_rank0.pt").exists() and (ckpt / "gfn_state_rank1.pt").exists()
    assert _close(resumed["losses"][3:], two["losses"][3:])
    for k in two["weights"]:
        assert _close(resumed["weights"][k], two["weights"][k]), k


# Sharded parameters: DeepSpeed ZeRO-3 (on DeepSpeed's CPU accelerator) splits every weight across the ranks, and the
# default reward is the policy with its LoRA adapter disabled, a known failure point with sharded weights. Two sharded
# processes must still reproduce the one-process run, and resume from their own checkpoints. (FSDP2 cannot be tested
# this way: Accelerate enables FSDP only on accelerators, never for multi-process CPU runs.)
SHARDED = {"zero3": "cpu_2proc_zero3.yaml"}


@pytest.fixture(scope="module", params=list(SHARDED))
def sharded_runs(request, runs):
    base, one, _, _ = runs
    config = ROOT / "accelerate_configs" / SHARDED[request.param]
    two = _launch(base / request.param, 1, "tb", config=config)
    resumed = _launch(base / request.param, 1, "tb", "resume", config=config)
    return request.param, base, one, two, resumed


def test_sharded_training_with_the_adapter_disabled_reward_matches_one_process(sharded_runs):
    kind, base, one, two, _ = sharded_runs
    assert two["world_size"] == 2 and two["sharded"] and not one["sharded"]
    if kind == "zero3":
        assert (base / kind / "checkpoint-3" / "global_step3").is_dir()  # a DeepSpeed checkpoint, sharded states
    assert _close(one["log_reward"], two["log_reward"])  # the adapter-disabled reward on sharded weights
    assert one["replay"] == two["replay"] and one["buffer_size"] == two["buffer_size"]
    assert _close(one["losses"], two["losses"]), (one["losses"], two["losses"])
    for k in one["weights"]:
        assert len(one["weights"][k]) == len(two["weights"][k]) > 0  # gathered, not an empty shard
        assert _close(one["weights"][k], two["weights"][k], tol=1e-4), k


def test_sharded_checkpoints_resume(sharded_runs):
    _, _, _, two, resumed = sharded_runs
    assert _close(resumed["losses"][3:], two["losses"][3:])
    for k in two["weights"]:
        assert _close(resumed["weights"][k], two["weights"][k]), k


def test_deepspeed_zero2_matches_one_process(runs):
    base, one, _, _ = runs
    two = _launch(base / "zero2", 1, "tb", config=ROOT / "accelerate_configs" / "cpu_2proc_zero2.yaml")
    assert two["world_size"] == 2 and _close(one["log_reward"], two["log_reward"])
    assert _close(one["losses"], two["losses"]), (one["losses"], two["losses"])
    for k in one["weights"]:
        assert len(one["weights"][k]) == len(two["weights"][k]) > 0
        assert _close(one["weights"][k], two["weights"][k], tol=1e-4), k
