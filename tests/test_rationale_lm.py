"""The arithmetic recipe's rationale-LM stage (`--rationale_lm_steps`) and its validation split (`--eval_split`):
the splits it draws are disjoint from every test and leave the tests and the training problems as they were; its
texts end the gold rationale with Y or with the stop token; the stage (`gfn_trl.tasks.lm_stage.finetune_lm`, shared
with infilling's story LM) raises a real tiny LM's likelihood of the complete gold rationale followed by the stop, and
of Y after it, above a partial rationale's; and the recipe runs it for every trainer before anything else."""

import sys
from types import SimpleNamespace

import pytest
import torch
from test_recipe_outputs import RUN, log_prob, tiny_checkpoint  # a sibling test module (pytest puts tests/ on the path)

from gfn_trl.tasks import arithmetic as A
from gfn_trl.tasks.base import RunContext, TaskData
from gfn_trl.testing import load_recipe


def test_validation_and_rationale_splits_are_disjoint_and_change_nothing_else():
    plain = A.make_splits(2, 40, 20, n_shots=3)
    full = A.make_splits(2, 40, 20, n_shots=3, n_val_per_length=20, n_rationale=64)
    assert {k: full[k] for k in plain} == plain  # the tests, demonstrations and train set are the same problems
    assert A.make_splits(2, 40, 20, n_shots=3, n_rationale=64)["rationale"] == full["rationale"]  # val drawn last
    assert {k: len(v) for k, v in full.items() if k not in plain} == {"rationale": 64, "val_3": 20, "val_4": 20}
    assert {p.n_operands for p in full["rationale"]} == {3, 4}
    assert {p.n_operands for p in full["val_3"]} == {3} and {p.n_operands for p in full["val_4"]} == {4}
    names = list(full)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            assert not set(full[a]) & set(full[b]), (a, b)
    with pytest.raises(AssertionError, match="test_4 .*rationale-LM"):
        A.check_disjoint({"rationale": full["test_4"][:1], "test_4": full["test_4"]})
    with pytest.raises(AssertionError, match="val_3"):
        A.check_disjoint({"train": full["val_3"][:1], "val_3": full["val_3"]})
    with pytest.raises(AssertionError, match="validation"):
        A.check_disjoint({"val_3": full["test_3"][:1], "test_3": full["test_3"]})


def test_validation_and_rationale_splits_from_a_file(tmp_path):
    import json

    rng = __import__("random").Random(0)
    problems = A.generate_problems(rng, 120, [3, 4, 5])
    path = tmp_path / "problems.jsonl"
    path.write_text("\n".join(json.dumps({"question": p.expression, "answer": p.answer}) for p in problems))
    s = A.load_splits(str(path), 0, None, 5, n_shots=3, n_val_per_length=4, n_rationale=10)
    assert len(s["rationale"]) == 10 and len(s["val_3"]) == len(s["val_4"]) == 4 and s["train"]
    assert A.load_splits(str(path), 0, None, 5, n_shots=3)["test_3"] == s["test_3"]
    with pytest.raises(ValueError, match="too few"):
        A.load_splits(str(path), 0, None, 5, n_shots=3, n_rationale=1000)


def test_rationale_texts_end_the_gold_with_y_or_the_stop():
    p = A.parse_question("6 - 0 - 4 - 8")
    assert A.rationale_texts([p], "<stop>") == [
        "Question: 6 - 0 - 4 - 8 = ? Answer: 6 - 0 = 6, 6 - 4 = 2, 2 - 8 = -6. The answer is -6.",
        "Question: 6 - 0 - 4 - 8 = ? Answer: 6 - 0 = 6, 6 - 4 = 2, 2 - 8 = -6<stop>",
    ]


def test_check_refuses_bad_stage_settings():
    base = dict(calculator=True, gold_weight=1, num_gold=10, rationale_lm_steps=0, num_rationale=64,
                eval_split="test", rationale_lm_learning_rate=1e-4, rationale_lm_cache=None)
    for change, message in [({"num_gold": -2}, "--num_gold"), ({"rationale_lm_steps": -1}, "--rationale_lm_steps"),
                            ({"rationale_lm_steps": 5, "num_rationale": 0}, "--num_rationale"),
                            ({"eval_split": "train"}, "--eval_split"),
                            ({"rationale_lm_steps": 5, "rationale_lm_learning_rate": 0.0}, "--rationale_lm_lear"),
                            ({"rationale_lm_steps": 5, "rationale_lm_learning_rate": -1e-4}, "--rationale_lm_lear")]:
        with pytest.raises(ValueError, match=message):
            A.TASK.check(RunContext(None, None, SimpleNamespace(**{**base, **change})))
    A.TASK.check(RunContext(None, None, SimpleNamespace(**base)))


def test_a_cache_that_is_a_file_is_refused_before_training(tiny, tmp_path):
    """--rationale_lm_cache naming a file: refused by check, and by finetune_lm before it trains (the trained stage
    was lost at the save, after its minutes)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from gfn_trl.tasks import lm_stage

    file = tmp_path / "cache.txt"
    file.write_text("not a folder")
    task = SimpleNamespace(calculator=True, gold_weight=1, num_gold=10, rationale_lm_steps=5, num_rationale=64,
                           eval_split="test", rationale_lm_learning_rate=1e-4, rationale_lm_cache=str(file))
    with pytest.raises(ValueError, match="--rationale_lm_cache .*cache.txt is a file"):
        A.TASK.check(RunContext(None, None, task))
    tok = AutoTokenizer.from_pretrained(tiny)
    texts = A.rationale_texts(A.make_splits(0, 2, 1, n_rationale=8)["rationale"], tok.eos_token)
    import trl

    def no_training(*args, **kwargs):
        raise AssertionError("trained before refusing the cache")

    trl_trainer, trl.SFTTrainer = trl.SFTTrainer, no_training
    try:
        with pytest.raises(ValueError, match="cache.txt is a file"):
            lm_stage.finetune_lm(AutoModelForCausalLM.from_pretrained(tiny), tok, texts, 1, 1e-3,
                                 cache_dir=str(file))
    finally:
        trl.SFTTrainer = trl_trainer


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return tiny_checkpoint(tmp_path_factory.mktemp("rationale_lm") / "tiny")


def test_stage_makes_the_lm_prefer_the_complete_gold_rationale_and_its_stop(tiny):
    """The task's `prepare_model` on a real tiny LM and tokenizer: after the stage, on a held-out problem of the
    training distribution, log p(Z_gold stop | X) and log p(Z_gold Y | X) rise, and the complete gold rationale before
    Y gains more than its first step alone does (the 135M reward preferred such partial rationales)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny)
    model = AutoModelForCausalLM.from_pretrained(tiny)
    splits = A.make_splits(0, 4, 4, n_shots=3, n_rationale=32)
    data = TaskData(splits["train"], {"test3": splits["test_3"]},
                    {"shots": splits["shots"], "rationale": splits["rationale"],
                     "held_out": {k: splits[k] for k in ("test_3", "test_4", "test_5")}})
    task_args = SimpleNamespace(rationale_lm_steps=40, rationale_lm_learning_rate=3e-3, rationale_lm_cache=None)
    ctx = RunContext(None, SimpleNamespace(seed=0, stop_token=None), task_args, model=model, tokenizer=tok)
    p = splits["test_3"][0]
    enc = lambda text: tok(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    x, z, y, first = enc(p.query), enc(A.gold_rationale(p)), enc(A.solution(p.answer)), enc(
        A.gold_rationale(p).split(",")[0])

    def scores(m):
        return (log_prob(m, x, z + [tok.eos_token_id]), log_prob(m, x, z + y), log_prob(m, x, first + y))

    stop_before, zy_before, partial_before = scores(model.eval())
    assert A.TASK.prepare_model(ctx, data) is True
    stop_after, zy_after, partial_after = scores(ctx.model)
    assert stop_after > stop_before + 5 and zy_after > zy_before + 5
    assert zy_after - zy_before > partial_after - partial_before + 5  # the gold gains on its first step alone

    # 0 steps: no stage, the model untouched; problems that overlap a test split are refused
    assert A.TASK.prepare_model(RunContext(None, ctx.args, SimpleNamespace(rationale_lm_steps=0), model=model),
                                data) is False
    bad = TaskData(data.train, data.eval, {**data.extra, "rationale": splits["test_5"][:2]})
    with pytest.raises(AssertionError, match="overlap a test"):
        A.TASK.prepare_model(ctx, bad)


@pytest.mark.parametrize("trainer", ["gfn", "sft"])
def test_recipe_runs_the_stage_before_every_trainer(trainer, tiny, tmp_path, monkeypatch):
    """Through the recipe: the stage's LM is the saved base of the adapter for the GFlowNet and SFT alike, and the
    validation split replaces the tests in the metrics."""
    import json

    from transformers import AutoModelForCausalLM

    module = load_recipe("arithmetic")
    argv = ["--trainer", trainer, "--model_name_or_path", str(tiny), "--output_dir", str(tmp_path / "out"), *RUN,
            "--num_train", "2", "--max_completion_length", "8", "--rationale_lm_steps", "2", "--num_rationale", "4",
            "--eval_split", "validation", "--num_gold", "-1"]
    if trainer != "sft":
        argv += ["--num_generations", "2"]
    monkeypatch.setattr(sys, "argv", ["arithmetic.py", *argv])
    module.main(*module.make_parser().parse_args_and_config())
    out = tmp_path / "out"
    metrics = json.loads((out / "metrics.json").read_text())["metrics"]
    assert {k.split("/")[0] for k in metrics[trainer]} == {"val3", "val4"}
    stage = AutoModelForCausalLM.from_pretrained(out / "base_model")
    untuned = AutoModelForCausalLM.from_pretrained(tiny)
    name = "model.embed_tokens.weight"
    assert not torch.equal(stage.state_dict()[name], untuned.state_dict()[name])


def test_stage_cache_gives_the_trained_weights_without_training(tiny, tmp_path, monkeypatch):
    """`finetune_lm(cache_dir=...)`: the first call trains and saves; a second from the same start, texts and
    settings loads the same weights without training; other texts train anew."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from gfn_trl.tasks import lm_stage

    tok = AutoTokenizer.from_pretrained(tiny)
    texts = A.rationale_texts(A.make_splits(0, 2, 1, n_rationale=8)["rationale"], tok.eos_token)
    first = lm_stage.finetune_lm(AutoModelForCausalLM.from_pretrained(tiny), tok, texts, 3, 1e-3, batch_size=4,
                                 cache_dir=str(tmp_path))
    assert len(list(tmp_path.glob("lm_stage-*.safetensors"))) == 1

    import trl

    def no_training(*args, **kwargs):
        raise AssertionError("the cached stage trained again")

    monkeypatch.setattr(trl, "SFTTrainer", no_training)
    again = lm_stage.finetune_lm(AutoModelForCausalLM.from_pretrained(tiny), tok, texts, 3, 1e-3, batch_size=4,
                                 cache_dir=str(tmp_path))
    for (name, a), b in zip(first.state_dict().items(), again.state_dict().values()):
        assert torch.equal(a, b), name
    with pytest.raises(AssertionError, match="trained again"):
        lm_stage.finetune_lm(AutoModelForCausalLM.from_pretrained(tiny), tok, texts[:-1], 3, 1e-3, batch_size=4,
                             cache_dir=str(tmp_path))


def test_stage_cache_refuses_a_corrupt_entry_and_keys_the_dtype_and_versions(tiny, tmp_path, monkeypatch):
    """A truncated, empty or foreign cache entry stops the stage with an error naming the file and the fix (not
    safetensors' bare header error), and is left in place; a bf16 start whose values equal the float32 start's gets
    its own entry (it trains other weights); a learning rate <= 0 is refused before training."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from gfn_trl.tasks import lm_stage

    tok = AutoTokenizer.from_pretrained(tiny)
    texts = A.rationale_texts(A.make_splits(0, 2, 1, n_rationale=8)["rationale"], tok.eos_token)
    lm_stage.finetune_lm(AutoModelForCausalLM.from_pretrained(tiny), tok, texts, 1, 1e-3, batch_size=4,
                         cache_dir=str(tmp_path))
    (entry,) = tmp_path.glob("lm_stage-*.safetensors")
    data = entry.read_bytes()
    for bad in (data[: len(data) // 2], b"", b"not safetensors at all"):
        entry.write_bytes(bad)
        with pytest.raises(ValueError, match=f"{entry.name}.*Delete it"):
            lm_stage.finetune_lm(AutoModelForCausalLM.from_pretrained(tiny), tok, texts, 1, 1e-3, batch_size=4,
                                 cache_dir=str(tmp_path))
        assert entry.read_bytes() == bad  # nothing deleted behind the user's back
    rounded = AutoModelForCausalLM.from_pretrained(tiny).to(torch.bfloat16)
    same_values = AutoModelForCausalLM.from_pretrained(tiny).to(torch.bfloat16).to(torch.float32)
    assert lm_stage.stage_key(rounded, texts) != lm_stage.stage_key(same_values, texts)
    # another TRL (or transformers, torch) may train other weights: its stage is not the cached one
    import trl

    key = lm_stage.stage_key(same_values, texts)
    monkeypatch.setattr(trl, "__version__", trl.__version__ + ".post1")
    assert lm_stage.stage_key(same_values, texts) != key
    monkeypatch.undo()
    assert lm_stage.stage_key(same_values, texts) == key
    for lr in (0.0, -1e-3):
        with pytest.raises(ValueError, match="learning rate > 0"):
            lm_stage.finetune_lm(AutoModelForCausalLM.from_pretrained(tiny), tok, texts, 1, lr)


def test_num_gold_beyond_the_training_problems_is_said(capsys):
    """--num_gold larger than the training set was capped without a word: now a warning names both counts, and says
    what the gold rationales are for under every trainer (it said 'seed the replay buffer' to --trainer sft too, which
    trains on them)."""
    recipe = SimpleNamespace(dataset=None, num_train=8, num_eval=2)
    task = dict(calculator=True, gold_weight=1, rationale_lm_steps=0, num_rationale=64, eval_split="test",
                rationale_lm_learning_rate=1e-4, rationale_lm_cache=None)
    for n, warned in ((9, True), (8, False), (-1, False)):
        data = A.TASK.load(RunContext(recipe, SimpleNamespace(seed=0), SimpleNamespace(num_gold=n, **task)))
        assert len(data.train) == 8
        out = capsys.readouterr().out
        assert ("Warning: --num_gold 9 exceeds the 8 training problems" in out) == warned
        assert ("the GFlowNet's replay seeds, SFT's training set" in out) == warned


def test_stage_leaves_the_special_token_ids_of_the_config_as_loaded(tmp_path):
    """TRL's SFTTrainer rewrote the model's config and generation config to the tokenizer's BOS / EOS / PAD ids when
    they differed (a Llama-style tokenizer, BOS 1 and EOS 2, on a model configured with 0): the trained stage's model
    then stopped generating at other tokens (generation_config.eos_token_id [2, 0]) than the same stage loaded from
    --rationale_lm_cache (0) or no stage at all, so the runs of one comparison (the first trains, the others load)
    differed by more than their trainer, and the saved base_model/ did too; the trained stage also left use_cache
    off.  The stage changes the weights only."""
    from gfn_trl.tasks import lm_stage
    from gfn_trl.testing import tiny_model, tokenizer_kind
    from gfn_trl.trainers.setup import ensure_pad_token

    tok = tokenizer_kind("llama")
    ensure_pad_token(tok)
    assert (tok.bos_token_id, tok.eos_token_id) != (0, 0)  # differs from tiny_model's config: what SFTTrainer aligned
    texts = A.rationale_texts(A.make_splits(0, 2, 1, n_rationale=4)["rationale"], tok.eos_token)

    def ids(model):
        return ([getattr(model.config, f"{k}_token_id") for k in ("bos", "eos", "pad")] + [model.config.use_cache],
                [getattr(model.generation_config, f"{k}_token_id") for k in ("bos", "eos", "pad")])

    loaded = ids(tiny_model("llama", len(tok)))
    for cache in (None, tmp_path, tmp_path):  # trained without a cache, trained and saved, loaded from it
        model = tiny_model("llama", len(tok))
        before = {k: v.clone() for k, v in model.state_dict().items()}
        tuned = lm_stage.finetune_lm(model, tok, texts, 1, 1e-3, batch_size=4,
                                     cache_dir=None if cache is None else str(cache))
        assert ids(tuned) == loaded
        assert any(not torch.equal(before[k], v) for k, v in tuned.state_dict().items())  # the weights did change
    assert len(list(tmp_path.glob("lm_stage-*.safetensors"))) == 1
