"""Fault injection on checkpoints (issue 12, kinds 3 and 4).

A tiny GPT-2 with LoRA trains 4 steps, saving at steps 2 and 4.  Each fault below is applied to a copy of that run's
output directory (or injected while it saves), then `resume_from_checkpoint=True` must either resume *exactly* from
the newest intact checkpoint (the losses and LoRA weights of the uninterrupted run) or refuse with a message that
names the file.
"""

from __future__ import annotations

import json
import logging
import os
import shutil

import pytest
import torch
from datasets import Dataset
from peft import LoraConfig
from transformers import TrainerState

from gfn_trl import GFlowNetConfig, GFlowNetTrainer
from gfn_trl.testing import tiny_model, tiny_tokenizer
from gfn_trl.trainers import checkpoints as ckpt

DATA = {"prompt": ["the cat", "a dog", "the big dog"], "suffix": ["sat .", "ran .", "ate ."]}


def make(out, trainer_class=GFlowNetTrainer, model=None, lora=None, **overrides):
    tok = tiny_tokenizer()
    kw = dict(output_dir=str(out), max_steps=4, per_device_train_batch_size=2, num_generations=3,
              max_completion_length=4, learning_rate=1e-2, warmup_steps=0, logging_steps=1, save_strategy="steps",
              save_steps=2, report_to="none", use_cpu=True, disable_tqdm=True, seed=1, replay_prob=0.5,
              tempered_prob=0.25, on_policy_prob=0.25)
    kw.update(overrides)
    return trainer_class(model if model is not None else tiny_model("gpt2", len(tok)), GFlowNetConfig(**kw),
                         train_dataset=Dataset.from_dict(DATA), processing_class=tok,
                         peft_config=lora or LoraConfig(r=4))


def outcome(trainer):
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    weights = {k: v.detach().clone() for k, v in trainer.model.state_dict().items() if "lora" in k}
    return losses, weights


def assert_same_run(result, reference):
    assert result[0] == reference[0]  # the losses of steps 1..4, the first two from the checkpoint's log history
    assert result[1].keys() == reference[1].keys()
    for k in reference[1]:
        assert torch.equal(result[1][k], reference[1][k]), k


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted run: its output directory and its outcome."""
    out = tmp_path_factory.mktemp("reference") / "run"
    trainer = make(out)
    trainer.train()
    assert [os.path.basename(p) for p in ckpt.checkpoint_folders(str(out))] == ["checkpoint-2", "checkpoint-4"]
    return out, outcome(trainer)


def resume(out):
    trainer = make(out)
    trainer.train(resume_from_checkpoint=True)
    return outcome(trainer)


def checkpoint_files(reference_dir) -> list[str]:
    return sorted(ckpt.read_manifest(str(reference_dir / "checkpoint-4"))["files"]) + [ckpt.MANIFEST_NAME]


def test_the_manifest_lists_every_file_a_resume_needs(reference):
    files = checkpoint_files(reference[0])
    for needed in ("adapter_model.safetensors", "optimizer.pt", "scheduler.pt", "rng_state.pth", "gfn_state_rank0.pt",
                   "trainer_state.json"):
        assert needed in files
    manifest = ckpt.read_manifest(str(reference[0] / "checkpoint-4"))
    assert manifest["resumable"] and manifest["fingerprint"]["loss"] == "subtb"
    assert manifest["fingerprint"]["architecture"].startswith("gpt2")


@pytest.mark.parametrize("fault", ["delete", "truncate"])
def test_each_file_deleted_or_truncated_falls_back_to_the_intact_checkpoint(reference, tmp_path, fault, caplog):
    """For every file of the newest checkpoint: the run resumes exactly from checkpoint-2, warning about the file."""
    ref_dir, ref_outcome = reference
    for name in checkpoint_files(ref_dir):
        out = tmp_path / f"{fault}-{name.replace('/', '_')}"
        shutil.copytree(ref_dir, out)
        target = out / "checkpoint-4" / name
        if fault == "delete":
            target.unlink()
        else:
            size = target.stat().st_size
            with open(target, "r+b") as f:
                f.truncate(max(0, size // 2))
        problem = ckpt.checkpoint_problem(str(out / "checkpoint-4"))
        assert problem is not None and name in problem, (name, problem)
        with pytest.raises(ValueError, match="not a complete GFlowNetTrainer checkpoint") as err:
            make(out).train(resume_from_checkpoint=str(out / "checkpoint-4"))  # the explicit path: refused
        assert name in str(err.value)
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            assert ckpt.last_complete_checkpoint(str(out)) == str(out / "checkpoint-2")
            result = resume(out)
        warned = " ".join(r.getMessage() for r in caplog.records)
        assert f"Skipping {out / 'checkpoint-4'}" in warned and name in warned, (name, warned)
        assert_same_run(result, ref_outcome)
        assert ckpt.is_complete_checkpoint(str(out / "checkpoint-4"))  # written again by the resumed run


def test_a_flipped_byte_is_caught_by_the_checksum(reference, tmp_path):
    ref_dir, ref_outcome = reference
    out = tmp_path / "run"
    shutil.copytree(ref_dir, out)
    path = out / "checkpoint-4" / "optimizer.pt"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    assert "optimizer.pt is corrupt" in ckpt.checkpoint_problem(str(out / "checkpoint-4"))
    assert_same_run(resume(out), ref_outcome)


STAGES = {
    "adapter": "save_model",
    "optimizer": "_save_optimizer_and_scheduler",
    "rng": "_save_rng_state",
    "state": "trainer_state_dict",
}


class Interrupted(Exception):
    pass


@pytest.mark.parametrize("stage", [*STAGES, "trainer_state", "manifest", "publish"])
def test_interrupted_save_at_each_stage_leaves_no_checkpoint_and_resumes_exactly(reference, tmp_path, stage,
                                                                                 monkeypatch):
    """An exception (a crash) at each stage of saving checkpoint-4: no checkpoint-4 appears, and the resumed run is
    the uninterrupted one."""
    ref_outcome = reference[1]
    out = tmp_path / "run"
    trainer = make(out)

    def crash_at_step_4(original):
        def wrapper(*args, **kwargs):
            if trainer.state.global_step == 4:
                raise Interrupted(stage)
            return original(*args, **kwargs)
        return wrapper

    if stage in STAGES:
        name = STAGES[stage]
        monkeypatch.setattr(trainer, name, crash_at_step_4(getattr(trainer, name)))
    elif stage == "trainer_state":
        monkeypatch.setattr(TrainerState, "save_to_json", crash_at_step_4(TrainerState.save_to_json))
    elif stage == "manifest":
        monkeypatch.setattr(ckpt, "write_manifest", crash_at_step_4(ckpt.write_manifest))
    else:
        monkeypatch.setattr(ckpt, "publish", crash_at_step_4(ckpt.publish))
    with pytest.raises(Interrupted):
        trainer.train()
    monkeypatch.undo()
    assert not (out / "checkpoint-4").exists()
    # what the crash left (nothing when it came before the first file): never taken for a checkpoint
    assert (out / ".staging-checkpoint-4").exists() == (stage != "adapter")
    assert ckpt.last_complete_checkpoint(str(out)) == str(out / "checkpoint-2")
    assert_same_run(resume(out), ref_outcome)
    assert not (out / ".staging-checkpoint-4").exists()  # cleaned up by the resumed run


def test_a_crash_while_re_saving_over_an_existing_checkpoint_never_leaves_a_mix(reference, tmp_path, monkeypatch):
    """A run resumed from checkpoint-2 re-saves checkpoint-4 over the old one.  Crashing after the old folder is
    moved aside, before the new one is renamed, leaves no checkpoint-4 (the old one is gone, the new one staged);
    crashing before leaves the old, intact one.  Either way, a resume is exact."""
    ref_dir, ref_outcome = reference
    out = tmp_path / "run"
    shutil.copytree(ref_dir, out)
    old_manifest = (out / "checkpoint-4" / ckpt.MANIFEST_NAME).read_text()
    real_replace = os.replace

    def crash_on_the_rename_into_place(src, dst):
        if str(dst).endswith("checkpoint-4") and ".staging" in str(src) and not str(src).endswith(".old"):
            raise Interrupted("publish")
        return real_replace(src, dst)

    trainer = make(out)
    monkeypatch.setattr(os, "replace", crash_on_the_rename_into_place)
    with pytest.raises(Interrupted):
        trainer.train(resume_from_checkpoint=str(out / "checkpoint-2"))
    monkeypatch.undo()
    assert not (out / "checkpoint-4").exists()
    assert ckpt.last_complete_checkpoint(str(out)) == str(out / "checkpoint-2")
    assert_same_run(resume(out), ref_outcome)
    assert ckpt.is_complete_checkpoint(str(out / "checkpoint-4"))
    # the re-saved checkpoint-4 is the same state as the old one, file for file (same run, same step)
    new = json.loads((out / "checkpoint-4" / ckpt.MANIFEST_NAME).read_text())["files"]
    old = json.loads(old_manifest)["files"]
    for name in ("adapter_model.safetensors", "gfn_state_rank0.pt"):
        assert new[name]["sha256"] == old[name]["sha256"], name


def test_a_fresh_run_into_a_used_output_dir(reference, tmp_path):
    """A fresh run (another seed) refuses a directory that holds checkpoints; with overwrite_output_dir it deletes
    them first, so its own checkpoints are all its own; resume_from_checkpoint=True continues the old run."""
    ref_dir, ref_outcome = reference
    out = tmp_path / "run"
    shutil.copytree(ref_dir, out)
    with pytest.raises(ValueError, match=r"already holds checkpoints of an earlier run \(checkpoint-2, checkpoint-4\)"
                       r".*resume_from_checkpoint=True.*overwrite_output_dir=True"):
        make(out, seed=2).train()
    other = make(out, seed=2, max_steps=2, overwrite_output_dir=True)
    other.train()
    assert [os.path.basename(p) for p in ckpt.checkpoint_folders(str(out))] == ["checkpoint-2"]
    fresh = tmp_path / "fresh"
    alone = make(fresh, seed=2, max_steps=2)
    alone.train()
    same = ckpt.read_manifest(str(fresh / "checkpoint-2"))["files"]
    mine = ckpt.read_manifest(str(out / "checkpoint-2"))["files"]
    assert mine["adapter_model.safetensors"] == same["adapter_model.safetensors"]


def test_a_crash_of_an_overwriting_run_leaves_nothing_of_either(reference, tmp_path, monkeypatch):
    ref_dir = reference[0]
    out = tmp_path / "run"
    shutil.copytree(ref_dir, out)
    trainer = make(out, seed=2, overwrite_output_dir=True)
    original = trainer._save_optimizer_and_scheduler

    def crash(folder):
        raise Interrupted("optimizer")

    monkeypatch.setattr(trainer, "_save_optimizer_and_scheduler", crash)
    with pytest.raises(Interrupted):
        trainer.train()
    monkeypatch.setattr(trainer, "_save_optimizer_and_scheduler", original)
    assert ckpt.checkpoint_folders(str(out)) == []  # the old run's are deleted, the new one's never appeared
    with pytest.raises(ValueError, match="holds no complete checkpoint"):
        make(out).train(resume_from_checkpoint=True)


# ---------------------------------------------------------------------------------------------------------------------
# Checkpoints that are not what the resuming run is


def test_wrong_paths_say_what_they_are(reference, tmp_path):
    ref_dir = reference[0]
    out = tmp_path / "run"
    shutil.copytree(ref_dir, out)
    trainer = make(tmp_path / "other")
    with pytest.raises(FileNotFoundError, match="checkpoint-44 does not exist"):
        trainer.train(resume_from_checkpoint=str(out / "checkpoint-44"))
    with pytest.raises(ValueError, match=r"is an output directory, not a checkpoint .*checkpoint-N or "
                       r"resume_from_checkpoint=True"):
        trainer.train(resume_from_checkpoint=str(out))


def test_missing_optimizer_or_save_only_model_is_not_resumable(reference, tmp_path):
    out = tmp_path / "run"
    trainer = make(out, save_only_model=True, max_steps=2)
    trainer.train()
    assert not (out / "checkpoint-2" / "optimizer.pt").exists()
    with pytest.raises(ValueError, match="save_only_model=True: it holds no optimizer.pt"):
        make(out).train(resume_from_checkpoint=True)
    with pytest.raises(ValueError, match="save_only_model=True"):
        make(out).train(resume_from_checkpoint=str(out / "checkpoint-2"))


@pytest.mark.parametrize("change, named", [
    ("base", "base_weights"),
    ("architecture", "architecture"),
    ("log_z", "log_z"),
    ("loss", "loss"),
    ("lora_r", "adapter"),
])
def test_a_resume_by_a_different_run_is_refused_saying_what_differs(reference, tmp_path, change, named):
    ref_dir = reference[0]
    out = tmp_path / "run"
    shutil.copytree(ref_dir, out)
    tok = tiny_tokenizer()
    kwargs = {
        "base": dict(model=tiny_model("gpt2", len(tok), seed=7)),  # same shapes, other weights
        "architecture": dict(model=tiny_model("llama", len(tok))),
        "log_z": dict(log_z="learned"),
        "loss": dict(loss_type="tb"),
        "lora_r": dict(lora=LoraConfig(r=8)),
    }[change]
    with pytest.raises(ValueError, match=f"written by a different run .*{named}: checkpoint"):
        make(out, **kwargs).train(resume_from_checkpoint=True)


def test_config_changes_on_resume_are_applied_or_refused(reference, tmp_path, caplog):
    ref_dir = reference[0]
    out = tmp_path / "run"
    shutil.copytree(ref_dir, out)
    with pytest.raises(ValueError, match=r"changed optimizer settings \(learning_rate: checkpoint 0.01, now 0.02\)"):
        make(out, learning_rate=2e-2).train(resume_from_checkpoint=True)
    with pytest.raises(ValueError, match="weight_decay: checkpoint 0.0, now 0.1"):
        make(out, weight_decay=0.1).train(resume_from_checkpoint=True)
    # Replay settings live in the saved buffer: the new config's apply (and the change is logged)
    saved = torch.load(out / "checkpoint-2" / "gfn_state_rank0.pt", weights_only=True)["replay_buffer"]
    assert max(len(v) for v in saved["data"].values()) > 1 and saved["prioritized"]
    trainer = make(out, replay_buffer_size=1, replay_prioritized=False)
    with caplog.at_level(logging.WARNING):
        trainer.load_trainer_state_dict(torch.load(out / "checkpoint-2" / "gfn_state_rank0.pt", weights_only=True))
    assert trainer.replay_buffer.capacity == 1 and not trainer.replay_buffer.prioritized
    assert all(len(trainer.replay_buffer.entries(k)) == 1 for k in saved["data"])
    for key, entries in saved["data"].items():  # the best entry of each prompt is the one kept
        assert list(trainer.replay_buffer.entries(key)[0].tokens) == max(entries, key=lambda e: e[1][-1])[0]
    assert "replay_buffer_size: 50 -> 1" in caplog.text and "replay_prioritized: True -> False" in caplog.text
