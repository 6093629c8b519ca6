"""Evaluation with two processes (accelerate launch, gloo on CPU) sees what one process sees.

The eval set (3 prompts) does not divide among 2 processes, so Accelerate pads the last eval batch with a duplicate
row; `compute_metrics` must receive each eval prompt's latents exactly once, the same latents as one process (the
evaluation's seeds depend on the prompt only), and the `log_completions` table is printed by the main process only.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

from gfn_trl.testing import accelerate_launch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "tests" / "scripts" / "ddp_eval.py"


def _launch(out, processes, per_device):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, str(SCRIPT), str(out), str(per_device)]
    if processes == 2:
        cmd = accelerate_launch(ROOT / "accelerate_configs" / "cpu_2proc.yaml", *cmd[1:])
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads((Path(out) / "result.json").read_text()), proc.stdout


def test_two_process_evaluation_hands_compute_metrics_the_one_process_samples(tmp_path):
    one, one_out = _launch(tmp_path / "one", 1, 2)
    two, two_out = _launch(tmp_path / "two", 2, 1)  # the same global batch
    assert (one["world_size"], two["world_size"]) == (1, 2)
    assert len(one["seen"]) == len(two["seen"]) == 2  # two evaluations
    assert [len(s) for s in two["seen"]] == [9, 9]  # 3 prompts x 3 latents, the padding row's latents dropped
    assert two["seen"] == one["seen"]  # the same latents with the same rewards
    assert [e["eval_samples"] for e in two["evals"]] == [9, 9]
    for a, b in zip(one["evals"], two["evals"]):
        assert abs(a["eval_loss"] - b["eval_loss"]) < 1e-4
    # printed by the main process only: 4 training logs and 2 evaluations
    assert one_out.count("completions at step") == two_out.count("completions at step") == 6
