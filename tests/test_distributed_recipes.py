"""The recipes under `accelerate launch` with two processes (gloo on CPU) give what one process gives.

The recipes are meant to be run as `accelerate launch recipes/<task>.py`; here the subjectivity recipe, whose run has
the most phases (the zero-/few-shot baselines, the GFlowNet's training and evaluation, then the M-step: a second
adapter trained with TRL's SFTTrainer inside the same run, and its judgement), runs on a tiny GGUF once in one
process and once in two with the same global batches (per-device batches halved), with TB (its loss is a mean over
trajectories, so the two runs' gradients agree; SubTB normalises by each process's windows, see the README).  Every
method's metrics must be the one-process ones (the M-step's training loss to float rounding), both adapters the same
weights, and the output directory written once, as one process writes it.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from gfn_trl.testing import accelerate_launch

ROOT = Path(__file__).resolve().parents[1]
REVIEWS = ["a plot", "i loved it", "the man", "so dull", "it rains", "what fun", "a town", "too sad"]


def _launch(task: str, processes: int, argv: list[str]) -> str:
    script = str(ROOT / "recipes" / f"{task}.py")
    cmd = [sys.executable, script, *argv]
    if processes == 2:
        cmd = accelerate_launch(ROOT / "accelerate_configs" / "cpu_2proc.yaml", script, *argv)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


def _weights(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path))


def _run(out: Path, processes: int, per_device: int, model: str, data: str) -> str:
    argv = ["--model_name_or_path", model, "--dataset", data, "--output_dir", str(out), "--num_eval", "2",
            "--num_labelled", "2", "--max_steps", "2", "--num_generations", "4", "--eval_samples", "3",
            "--untuned_baseline", "false", "--wishful_rationales", "1", "--m_step_rationales", "2",
            "--m_step_steps", "3", "--m_step_learning_rate", "0.05", "--use_cpu", "true", "--disable_tqdm", "true",
            "--per_device_train_batch_size", str(per_device), "--m_step_batch_size", str(per_device),
            "--loss_type", "tb"]
    return _launch("subjectivity", processes, argv)


def test_subjectivity_with_its_m_step_under_two_processes_matches_one_process(tmp_path):
    pytest.importorskip("gguf")
    from gfn_trl.testing import tiny_gguf

    model = str(tiny_gguf(tmp_path / "gguf"))
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps({"text": w, "label": ("objective", "subjective")[i % 2]}) + "\n"
                            for i, w in enumerate(REVIEWS)))
    one_out = _run(tmp_path / "one", 1, 2, model, str(data))
    two_out = _run(tmp_path / "two", 2, 1, model, str(data))  # the same global batches
    one = json.loads((tmp_path / "one" / "metrics.json").read_text())["metrics"]
    two = json.loads((tmp_path / "two" / "metrics.json").read_text())["metrics"]
    assert list(one) == list(two) == ["zero_shot", "few_shot", "gfn", "gfn_m_step"]
    loss = "m_step/train_loss"
    for method in one:
        assert {k: v for k, v in two[method].items() if k != loss} == {k: v for k, v in one[method].items()
                                                                       if k != loss}, method
    assert two["gfn_m_step"][loss] == pytest.approx(one["gfn_m_step"][loss], rel=1e-5)
    for adapter in ("adapter_model.safetensors", "m_step/adapter_model.safetensors"):
        a, b = _weights(tmp_path / "one" / adapter), _weights(tmp_path / "two" / adapter)
        assert a.keys() == b.keys() and a
        for name in a:
            torch.testing.assert_close(b[name], a[name], rtol=1e-4, atol=1e-6, msg=f"{adapter}: {name}")
    # written once: the same samples, one summary printed
    assert (tmp_path / "two" / "samples.jsonl").read_text() == (tmp_path / "one" / "samples.jsonl").read_text()
    assert one_out.count("review: a plot") == two_out.count("review: a plot") == 1
    for message in ("Calibrated judge:", "M-step: a new adapter"):  # said once, not once a process
        assert one_out.count(message) == two_out.count(message) == 1, message


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory):
    from test_recipe_outputs import tiny_checkpoint  # a sibling test module: a tiny Llama with a byte-level BPE

    return str(tiny_checkpoint(tmp_path_factory.mktemp("tiny") / "lm"))


RUN = ["--max_steps", "2", "--num_eval", "1", "--eval_samples", "1", "--use_cpu", "true", "--learning_rate", "0.02",
       "--warmup_steps", "0", "--report_to", "none", "--seed", "1", "--disable_tqdm", "true", "--num_generations",
       "2", "--loss_type", "tb"]


def _metrics(out: Path) -> dict:
    return json.loads((out / "metrics.json").read_text())["metrics"]


def _assert_same_run(one: Path, two: Path, rel: float = 1e-5) -> None:
    """Same methods and metrics (to float rounding), same LM stage weights (the adapter's saved base)."""
    a, b = _metrics(one), _metrics(two)
    assert list(a) == list(b)
    for method in a:
        assert b[method] == pytest.approx(a[method], rel=rel), method
    wa, wb = _weights(one / "base_model" / "model.safetensors"), _weights(two / "base_model" / "model.safetensors")
    assert wa.keys() == wb.keys()
    for name in wa:
        torch.testing.assert_close(wb[name], wa[name], rtol=1e-5, atol=1e-6, msg=name)


def test_infill_story_lm_stage_under_two_processes_trains_on_the_one_process_batches(tiny_lm, tmp_path):
    """The story-LM stage (a full fine-tuning with TRL's SFTTrainer before the GFlowNet) joins the launch and trains
    data-parallel: it took 8 stories per process, so two processes trained on batches of 16 and the stage's LM (the
    reward, the policy's start and the evaluation likelihood) differed from one process's (0.013 nats in every
    log-likelihood here); it now takes 4 each."""
    argv = ["--model_name_or_path", tiny_lm, *RUN, "--story_lm_steps", "2", "--max_completion_length", "6"]
    _launch("infill", 1, [*argv, "--per_device_train_batch_size", "2", "--output_dir", str(tmp_path / "one")])
    _launch("infill", 2, [*argv, "--per_device_train_batch_size", "1", "--output_dir", str(tmp_path / "two")])
    _assert_same_run(tmp_path / "one", tmp_path / "two")


def test_arithmetic_rationale_lm_cache_under_two_processes(tiny_lm, tmp_path):
    """The rationale-LM stage under two processes trains on the one-process batches, its cache entry is written once
    (by the main process: no `.partial` left, one entry), and a second two-process run loads it and gives the same
    run."""
    cache = tmp_path / "cache"
    argv = ["--model_name_or_path", tiny_lm, *RUN, "--rationale_lm_steps", "2", "--num_rationale", "16",
            "--max_completion_length", "8", "--num_train", "4"]
    _launch("arithmetic", 1, [*argv, "--per_device_train_batch_size", "2", "--output_dir", str(tmp_path / "one")])
    two = [*argv, "--per_device_train_batch_size", "1", "--rationale_lm_cache", str(cache)]
    _launch("arithmetic", 2, [*two, "--output_dir", str(tmp_path / "two")])
    _assert_same_run(tmp_path / "one", tmp_path / "two")
    assert [p.suffix for p in cache.iterdir()] == [".safetensors"]
    out = _launch("arithmetic", 2, [*two, "--output_dir", str(tmp_path / "again")])
    assert out.count("stage: loaded from") == 2  # each process loads the entry instead of training
    _assert_same_run(tmp_path / "two", tmp_path / "again", rel=0)
