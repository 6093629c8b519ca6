"""Progress bars of the long phases outside the Trainer's loop (main process only, off under disable_tqdm), and the
evaluation / decoding seeds after their move to `sampling.counter_seed`: bit-identical to the CRC-32 formulas the
baselines always drew from."""

import io
import os
import subprocess
import sys
import zlib
from contextlib import redirect_stderr

import pytest
import torch
from test_recipe_outputs import RUN, tiny_checkpoint

from gfn_trl import progress as P
from gfn_trl.sampling import counter_seed


@pytest.fixture(autouse=True)
def _restore_switch():
    yield
    P.set_progress(None)


def _bar_text(**kwargs) -> str:
    err = io.StringIO()
    with redirect_stderr(err):
        for _ in P.progress(range(3), desc="phase", **kwargs):
            pass
    return err.getvalue()


def test_bars_follow_the_switch_and_the_rank():
    P.set_progress(True)
    assert "phase" in _bar_text()
    with P.progress_label("gfn"):
        assert "gfn: phase" in _bar_text()
    P.set_progress(False)  # what --disable_tqdm true does
    assert _bar_text() == ""
    # another rank of a launch, in a fresh process (here Accelerate's state may already say "main process")
    probe = ("import io, contextlib; from gfn_trl import progress as P; P.set_progress(True); err = io.StringIO()\n"
             "with contextlib.redirect_stderr(err):\n    list(P.progress(range(3), desc='phase'))\n"
             "print(repr(err.getvalue()), P.is_main_process())")
    for rank, want in (("1", "'' False"), ("0", "True")):
        out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120,
                             env={**os.environ, "RANK": rank})
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip().endswith(want) and (rank == "1") != ("phase" in out.stdout)


@pytest.mark.parametrize("kind", ["eval", "decode"])
def test_counter_seeds_are_the_old_crc32_seeds(kind):
    for seed in (0, 1, 42, 2**31 + 7):
        for i in range(0, 40, 3):
            for j in range(10):
                assert counter_seed(kind, seed, i, j) == zlib.crc32(f"{kind}:{seed}:{i}:{j}".encode())


def test_decodings_sample_is_the_sampler_with_the_old_seeds():
    """`decode(method="sample")` draws exactly what it drew with its own zlib seeds (same latents, bit for bit)."""
    from gfn_trl.evaluation.decoding import decode
    from gfn_trl.sampling import LatentConstraints, left_pad, sample_latents
    from gfn_trl.testing import tiny_model, tiny_tokenizer

    tok = tiny_tokenizer()
    model = tiny_model("llama", len(tok), seed=3).train()  # back in train mode afterwards
    constraints = LatentConstraints(max_length=5, min_length=1, stop_token_id=tok.eos_token_id)
    prompts = [tok("the cat")["input_ids"], tok("a dog sat")["input_ids"], tok("the")["input_ids"]]
    got = decode(model, tok, prompts, "sample", 3, constraints, seed=11, batch_size=2)
    assert model.training
    want = []
    model.eval()
    for lo in range(0, 3, 2):
        chunk = prompts[lo : lo + 2]
        ids, mask = left_pad([p for p in chunk for _ in range(3)], tok.pad_token_id, "cpu")
        seeds = [zlib.crc32(f"decode:11:{lo + i // 3}:{i % 3}".encode()) for i in range(len(chunk) * 3)]
        with torch.no_grad():
            z, n = sample_latents(model, ids, mask, constraints, 1.0, tok.pad_token_id, seeds)
        latents = [z[b, : int(n[b])].tolist() for b in range(z.shape[0])]
        want += [latents[i : i + 3] for i in range(0, len(latents), 3)]
    assert got == want


@pytest.mark.parametrize("disable", ["true", "false"])
def test_a_recipe_run_shows_its_phases_unless_disable_tqdm(disable, tmp_path, monkeypatch):
    from gfn_trl.testing import load_recipe

    tiny_checkpoint(tmp_path / "tiny")
    module = load_recipe("infill")
    monkeypatch.setattr(sys, "argv", [
        "infill.py", "--model_name_or_path", str(tmp_path / "tiny"), "--output_dir", str(tmp_path / "out"), *RUN,
        "--skip_baseline", "false", "--num_train", "2", "--num_generations", "2", "--story_lm_steps", "1",
        "--disable_tqdm", disable])
    err = io.StringIO()
    with redirect_stderr(err):
        module.main(*module.make_parser().parse_args_and_config())
    text = err.getvalue()
    phases = ["prompting: sampling and scoring", "gfn: sampling and scoring", "seeding the replay buffer"]
    if disable == "true":
        assert not any(p in text for p in phases) and "it/s]" not in text
    else:
        assert all(p in text for p in phases), text[-2000:]


@pytest.mark.parametrize(("trainer", "extra"), [("gfn", ["--decoding", "beam", "greedy"]),
                                                ("grpo", ["--per_device_train_batch_size", "4"])])
def test_a_recipe_run_prints_no_warning_a_user_cannot_act_on(trainer, extra, tmp_path, monkeypatch):
    """No deprecated argument of our own (the KV cache under its current name, activation_checkpointing in TRL's
    configs), no pin_memory on CPU, and the libraries' own deprecation notices (PEFT, TRL) kept out of the output."""
    import warnings

    from gfn_trl.testing import load_recipe

    tiny_checkpoint(tmp_path / "tiny")
    module = load_recipe("continuation")
    monkeypatch.setattr(sys, "argv", [
        "continuation.py", "--model_name_or_path", str(tmp_path / "tiny"), "--output_dir", str(tmp_path / "out"),
        *RUN, "--num_train", "2", "--num_generations", "2", "--trainer", trainer, *extra])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        module.main(*module.make_parser().parse_args_and_config())
    shown = [f"{w.category.__name__}: {w.message} ({w.filename}:{w.lineno})" for w in caught
             if issubclass(w.category, (FutureWarning, DeprecationWarning)) or "pin_memory" in str(w.message)]
    assert shown == []
