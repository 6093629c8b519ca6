"""Faults found by trying this session's new features as a user would (reward functions, evaluation, compute_metrics,
the recipes' parser, model cards, min_length_mode, checkpoints); each test failed before its fix.  Real tiny models
and real tokenizers throughout."""

import asyncio
import os
import tempfile

import numpy as np
import pytest
import torch
from datasets import Dataset
from peft import LoraConfig

os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")

from gfn_trl import GFlowNetConfig, GFlowNetTrainer  # noqa: E402
from gfn_trl.rewards.functions import RewardFunctions  # noqa: E402
from gfn_trl.sampling import latent_batch  # noqa: E402
from gfn_trl.testing import tiny_model, tiny_tokenizer  # noqa: E402

ROWS = {"prompt": ["the cat", "a dog"], "suffix": ["slept .", "ran ."], "answer": ["cat", "dog"]}
EVAL_ROWS = {"prompt": ["a big cat", "the red dog", "a cat"], "suffix": ["ate .", "sat .", "ran ."],
             "answer": ["x", "y", "z"]}


def _config(tmp_path, cls=GFlowNetConfig, **kw):
    base = dict(output_dir=str(tmp_path), max_steps=2, per_device_train_batch_size=2, per_device_eval_batch_size=2,
                num_generations=2, max_completion_length=3, learning_rate=1e-2, warmup_steps=0, logging_steps=1,
                save_strategy="no", report_to="none", use_cpu=True, disable_tqdm=True, seed=3)
    base.update(kw)
    return cls(**base)


def _trainer(tmp_path, funcs=None, rows=ROWS, eval_rows=None, cls=GFlowNetTrainer, config=GFlowNetConfig,
             compute_metrics=None, tok=None, **kw):
    tok = tok or tiny_tokenizer()
    eval_dataset = eval_rows
    if isinstance(eval_rows, dict) and "prompt" in eval_rows:
        eval_dataset = Dataset.from_dict(eval_rows)
    return cls(tiny_model("gpt2", len(tok), seed=0), _config(tmp_path, config, **kw),
               train_dataset=Dataset.from_dict(rows), eval_dataset=eval_dataset, processing_class=tok,
               peft_config=LoraConfig(r=4), reward_funcs=funcs, compute_metrics=compute_metrics)


def _score(func, texts=("on the mat", "ran")):
    tok = tiny_tokenizer()
    z, lengths = latent_batch([tok(t, add_special_tokens=False)["input_ids"] for t in texts], 0)
    rows = [{"prompt": "the cat"}, {"prompt": "a dog"}]
    return RewardFunctions(func).score(rows, z, lengths, tok), lengths


# --------------------------------------------------------------------------------------- reward functions' outputs


def test_reward_functions_may_return_numpy_arrays_and_tensors_as_trl_accepts():
    for make in (np.array, torch.tensor, lambda v: np.array(v, dtype=np.float32)):
        def f(prompts, completions, completion_ids, make=make, **kwargs):
            return make([float(len(c)) for c in completion_ids])

        scores, lengths = _score(f)
        assert scores.values[[0, 1], 0, lengths].tolist() == [3.0, 1.0]


@pytest.mark.parametrize("out, match", [
    (torch.ones(2, 1), r"Tensor of shape \(2, 1\).*one-dimensional"),
    (np.float64(1.0), r"float64 of shape \(\).*one-dimensional"),
])
def test_an_array_of_the_wrong_shape_is_refused_naming_the_shape(out, match):
    with pytest.raises(ValueError, match=match):
        _score(lambda prompts, completions, **kw: out)


def test_a_plain_function_returning_an_awaitable_is_awaited():
    """A synchronous wrapper around an async function (a decorator, a lambda) returns a coroutine: awaited, also
    when this thread already runs an event loop (a notebook)."""
    async def count(prompts, completions, completion_ids, **kwargs):
        await asyncio.sleep(0)
        return [float(len(c)) for c in completion_ids]

    def wrapped(prompts, completions, completion_ids, **kwargs):
        return count(prompts, completions, completion_ids)

    scores, lengths = _score(wrapped)
    assert scores.values[[0, 1], 0, lengths].tolist() == [3.0, 1.0]

    async def in_a_running_loop():
        return _score(wrapped)

    scores, lengths = asyncio.run(in_a_running_loop())
    assert scores.values[[0, 1], 0, lengths].tolist() == [3.0, 1.0]


def test_text_rewards_are_refused_rather_than_parsed():
    with pytest.raises(TypeError, match=r"returned '1\.0' for the completion 'on the mat'"):
        _score(lambda prompts, completions, **kw: ["1.0", "2.0"])


def test_an_exception_inside_a_reward_function_names_the_function_and_its_inputs():
    def broken(prompts, completions, completion_ids, **kwargs):
        raise RuntimeError("boom")

    async def broken_async(prompts, completions, completion_ids, **kwargs):
        await asyncio.sleep(0)
        raise KeyError("missing")

    for f, exc, name in ((broken, RuntimeError, "broken"), (broken_async, KeyError, "broken_async")):
        with pytest.raises(exc) as info:
            _score(f)
        (note,) = info.value.__notes__
        assert f"reward function {name!r}" in note and "'on the mat' for the prompt 'the cat'" in note


# --------------------------------------------------------------------------------------- reward functions' signatures


def _needs_answer(prompts, completions, completion_ids, answer, **kwargs):
    return [float(a in c) for a, c in zip(answer, completions)]


def _no_kwargs(prompts, completions, completion_ids):
    return [0.0] * len(completions)


def test_a_reward_function_that_cannot_take_the_datasets_columns_is_refused_at_construction(tmp_path):
    no_answer = {"prompt": ROWS["prompt"], "suffix": ROWS["suffix"]}
    with pytest.raises(ValueError, match=r"'_needs_answer' cannot be called on the train dataset: no argument fills "
                                         r"its parameter\(s\) \['answer'\].*here \['suffix'\]"):
        _trainer(tmp_path, _needs_answer, rows=no_answer, loss_type="tb")
    with pytest.raises(ValueError, match=r"'_no_kwargs' cannot be called on the train dataset: it does not take \["
                                         r"'suffix', 'answer', 'trainer_state', 'log_metric', 'log_extra'\].*kwargs"):
        _trainer(tmp_path, _no_kwargs, loss_type="tb")
    # an eval dataset without the column the function reads
    with pytest.raises(ValueError, match=r"cannot be called on the eval dataset.*\['answer'\]"):
        _trainer(tmp_path, _needs_answer, eval_rows={"prompt": ["a cat"], "suffix": ["ran ."]}, loss_type="tb")
    # a column that would collide with the call's own arguments
    with pytest.raises(ValueError, match=r"column\(s\) \['completions'\], which reward functions receive"):
        _trainer(tmp_path, _needs_answer, rows={**ROWS, "completions": ["x", "y"]}, loss_type="tb")
    # and TRL's GRPO, built by gfn_trl: the same check before any model is loaded
    from trl import GRPOConfig

    from gfn_trl.trainers.trl_baselines import build_grpo_trainer, latent_constraints

    tok = tiny_tokenizer()
    args = GRPOConfig(output_dir=tempfile.mkdtemp(), per_device_train_batch_size=4, num_generations=4,
                      report_to="none", use_cpu=True)
    with pytest.raises(ValueError, match=r"'_needs_answer' cannot be called on the train dataset"):
        build_grpo_trainer("no/such-model", args, Dataset.from_dict(no_answer), latent_constraints(tok, 4),
                           processing_class=tok, reward_funcs=[_needs_answer])
    _trainer(tmp_path, _needs_answer, loss_type="tb").train()  # the right columns: trains


# --------------------------------------------------------------------------------------- evaluation datasets


def _stable(metrics):
    return {k: v for k, v in metrics.items() if "runtime" not in k and "per_second" not in k
            and "preparation_time" not in k}


def test_evaluate_and_predict_take_a_dataset_at_call_time_as_the_hf_trainer_does(tmp_path):
    built = _trainer(tmp_path / "a", eval_rows=EVAL_ROWS).evaluate()
    late = _trainer(tmp_path / "b")
    # a raw dataset given to evaluate() / predict() is tokenized as the constructor's eval dataset is
    assert _stable(late.evaluate(eval_dataset=Dataset.from_dict(EVAL_ROWS))) == _stable(built)
    test = late.predict(Dataset.from_dict(EVAL_ROWS))
    assert test.predictions is None and test.metrics["test_loss"] == built["eval_loss"]
    # a dict of eval datasets, at construction or at call time: one evaluation each, with its own prefix
    named = _trainer(tmp_path / "c", eval_rows={"big": Dataset.from_dict(EVAL_ROWS),
                                                "one": Dataset.from_dict({k: v[:1] for k, v in EVAL_ROWS.items()})})
    out = named.evaluate()
    assert out["eval_big_loss"] == built["eval_loss"] and "eval_one_loss" in out
    assert named.evaluate(eval_dataset="big")["eval_loss"] == built["eval_loss"]
    with pytest.raises(ValueError, match=r"evaluate\(\) needs an eval dataset: pass eval_dataset="):
        late.evaluate()
    late.eval_dataset = Dataset.from_dict(EVAL_ROWS)  # assigned after construction: tokenized when used
    assert _stable(late.evaluate()) == _stable(built)


def test_an_eval_dataset_scored_by_another_reward_is_refused(tmp_path):
    no_suffix = {"prompt": ["a cat", "a dog"]}
    with pytest.raises(ValueError, match=r"the train dataset has a 'suffix' column and the eval dataset has none"):
        _trainer(tmp_path, eval_rows=no_suffix)
    trainer = _trainer(tmp_path)
    with pytest.raises(ValueError, match=r"scored by another reward"):
        trainer.evaluate(eval_dataset=Dataset.from_dict(no_suffix))
    with pytest.raises(ValueError, match=r"the eval \(other\) dataset has a 'reward_prompt' column and the train"):
        _trainer(tmp_path, eval_rows={"other": Dataset.from_dict({**EVAL_ROWS, "reward_prompt": EVAL_ROWS["prompt"]})})


def test_an_eval_dataset_that_fills_no_batch_is_refused(tmp_path):
    """dataloader_drop_last with fewer eval rows than an eval batch: the evaluation saw no sample, logged no
    eval_loss and called compute_metrics on nothing, silently."""
    with pytest.raises(ValueError, match=r"drops every eval batch: the eval dataset has 3 rows but an eval batch "
                                         r"takes 8"):
        _trainer(tmp_path, eval_rows=EVAL_ROWS, dataloader_drop_last=True, per_device_eval_batch_size=8)
    trainer = _trainer(tmp_path, dataloader_drop_last=True, per_device_eval_batch_size=8)
    with pytest.raises(ValueError, match=r"drops every eval batch"):
        trainer.evaluate(eval_dataset=Dataset.from_dict(EVAL_ROWS))


# --------------------------------------------------------------------------------------- compute_metrics


def test_compute_metrics_with_the_hf_trainers_signature_is_refused_at_construction(tmp_path):
    def hf_style(eval_pred):
        return {"accuracy": 1.0}

    for eval_rows in (EVAL_ROWS, None):  # with the eval dataset, or one to come
        with pytest.raises(TypeError, match=r"compute_metrics cannot be called.*not the HF Trainer's"):
            _trainer(tmp_path, eval_rows=eval_rows, compute_metrics=hf_style)

    def needs_gold(prompts, completions, completion_ids, log_rewards, gold, **columns):
        return {"n": len(gold)}

    with pytest.raises(TypeError, match=r"no argument fills its parameter\(s\) \['gold'\]"):
        _trainer(tmp_path, eval_rows=EVAL_ROWS, compute_metrics=needs_gold)
    trainer = _trainer(tmp_path, compute_metrics=needs_gold)  # no eval dataset yet: 'gold' may come with it
    with pytest.raises(TypeError, match=r"\['gold'\]"):
        trainer.evaluate(eval_dataset=Dataset.from_dict(EVAL_ROWS))
    assert trainer.evaluate(eval_dataset=Dataset.from_dict({**EVAL_ROWS, "gold": [1, 2, 3]}))["eval_n"] == 6


def test_compute_metrics_names_follow_the_hf_prefix_rule_and_cannot_replace_the_trainers(tmp_path):
    trainer = _trainer(tmp_path, eval_rows=EVAL_ROWS, compute_metrics=lambda **kw: {"eval_acc": 0.5, "f1": 0.25})
    out = trainer.evaluate()
    assert out["eval_acc"] == 0.5 and out["eval_f1"] == 0.25 and "eval_eval_acc" not in out
    for name in ("loss", "eval_entropy"):
        trainer.compute_metrics = lambda name=name, **kw: {name: 3.0}
        with pytest.raises(ValueError, match=r"compute_metrics returned \['eval_(loss|entropy)'\], which the trainer "
                                             r"logs itself"):
            trainer.evaluate()


def test_an_exception_in_compute_metrics_names_it(tmp_path):
    trainer = _trainer(tmp_path, eval_rows=EVAL_ROWS, compute_metrics=lambda **kw: 1 / 0)
    with pytest.raises(ZeroDivisionError) as info:
        trainer.evaluate()
    assert "raised by compute_metrics, called on the 6 latents" in info.value.__notes__[0]


def test_compute_metrics_gets_completions_as_reward_functions_do(tmp_path):
    """Conversational prompts: the completions are assistant messages (TRL's reward-function format), decoded
    without special tokens, so that a reward function can serve as a metric."""
    from gfn_trl.testing import tokenizer_kind

    tok = tokenizer_kind("bos_chat")
    seen = {}

    def record(prompts, completions, completion_ids, log_rewards, **columns):
        seen.update(prompts=prompts, completions=completions, ids=completion_ids)
        return {}

    conv = {"prompt": [[{"role": "user", "content": "the cat"}], [{"role": "user", "content": "a dog"}]]}
    trainer = _trainer(tmp_path, rows=conv, eval_rows=conv, compute_metrics=record, tok=tok)
    trainer.evaluate()
    assert seen["prompts"][0] == conv["prompt"][0]
    for message, ids in zip(seen["completions"], seen["ids"]):
        assert message == [{"role": "assistant", "content": tok.decode(ids, skip_special_tokens=True)}]


# --------------------------------------------------------------------------------------- the recipes' command line


def _parse(task, argv, yaml_text=None, tmp_path=None):
    from gfn_trl.testing import load_recipe

    if yaml_text is not None:
        path = tmp_path / "run.yaml"
        path.write_text(yaml_text)
        argv = [str(path) if a == "YAML" else a.replace("=YAML", f"={path}") for a in argv]
    return load_recipe(task).make_parser(argv).parse_args_and_config(args=argv)


def test_a_config_file_is_read_in_both_spellings_and_must_be_a_mapping(tmp_path):
    for argv in (["--config", "YAML"], ["--config=YAML"]):
        recipe, args = _parse("continuation", argv, "trainer: ppo\nmax_steps: 3\n", tmp_path)
        assert type(args).__name__ == "PPOConfig" and args.max_steps == 3
    with pytest.raises(ValueError, match=r"holds a list, not a mapping: write one `flag: value` per line"):
        _parse("continuation", ["--config", "YAML"], "- max_steps: 3\n", tmp_path)
    with pytest.raises(FileNotFoundError, match=r"--config .*nope.yaml: no such file"):
        _parse("continuation", ["--config", str(tmp_path / "nope.yaml")])


@pytest.mark.parametrize("task, yaml_text, argv, match", [
    # a setting of another trainer, in the file written for this one or as a flag
    ("continuation", "kl_coef: 0.1\n", [], r"kl_coef \(in the --config file\) is a setting of --trainer ppo "
                                           r"\(PPOConfig\), not of this run's GFlowNetConfig"),
    ("continuation", None, ["--kl_coef", "0.1"], r"--kl_coef is a setting of --trainer ppo"),
    ("infill", "trainer: grpo\nreplay_prob: 0.3\n", [], r"replay_prob .* --trainer gfn \(GFlowNetConfig\), not of "
                                                        r"this run's LatentGRPOConfig"),
    # a flag of another task, in the file
    ("continuation", "ban_newlines: false\n", [], r"ban_newlines \(in the --config file\) is a flag of the infill "
                                                  r"and subjectivity recipes only"),
    # a misspelling: the closest flags
    ("continuation", "learning_rte: 0.1\n", [], r"learning_rte \(in the --config file\) is not a flag of this "
                                                r"recipe\. Did you mean learning_rate"),
    ("continuation", None, ["--num_generatoins", "4"], r"--num_generatoins is not a flag.*num_generations"),
    # null where a value is needed
    ("continuation", "max_steps: null\n", [], r"max_steps \(in the --config file\) is null, but it needs a value"),
])
def test_a_key_this_run_does_not_take_is_refused_naming_where_it_belongs(tmp_path, task, yaml_text, argv, match):
    argv = (["--config", "YAML"] if yaml_text is not None else []) + argv
    with pytest.raises(ValueError, match=match):
        _parse(task, argv, yaml_text, tmp_path)


@pytest.mark.parametrize("trainer, batch", [("ppo", 1), ("grpo", 64), ("sft", 1)])
def test_a_paper_config_runs_with_another_trainer(trainer, batch, caplog, tmp_path):
    """The paper configs are written for the GFlowNet; `--trainer ppo` on one of them (the paper's comparison) was
    refused for its GFlowNet-only keys (TRL: 'Unknown arguments from config file').  Those are left out, with a
    warning naming them; GRPO/RLOO count completions in the batch; the output directory gets the trainer's suffix,
    as the CPU defaults' does."""
    import logging

    path = os.path.join(os.path.dirname(__file__), "..", "recipes", "configs", "infill_gpt2-large.yaml")
    with caplog.at_level(logging.WARNING):
        parsed = _parse("infill", ["--config", path, "--trainer", trainer])
    args, own = parsed[1], _parse("infill", ["--config", path])[1]
    assert args.per_device_train_batch_size == batch and args.output_dir == f"{own.output_dir}-{trainer}"
    assert args.learning_rate == own.learning_rate and args.max_completion_length == own.max_completion_length
    assert f"the file was written for --trainer gfn (GFlowNetConfig) and this run is --trainer {trainer}" in caplog.text
    assert "replay_prob" in caplog.text and "left out" in caplog.text
    # a file written for this trainer still refuses another trainer's keys
    with pytest.raises(ValueError, match="replay_prob .* is a setting of --trainer gfn"):
        _parse("infill", ["--config", "YAML"], "trainer: ppo\nreplay_prob: 0.3\n", tmp_path)


def test_config_values_take_the_flags_types(tmp_path):
    recipe, args = _parse("continuation", ["--config", "YAML"], "decoding: greedy\nlearning_rate: 3e-4\n"
                          "min_length_log_reward: null\nstop_token: 7\nwarmup_steps: 2\n", tmp_path)
    assert recipe.decoding == ["greedy"]  # one method: a list of one, not the characters of a string
    assert args.learning_rate == 3e-4 and args.min_length_log_reward is None  # (None is this field's value)
    assert args.stop_token == "7" and isinstance(args.warmup_steps, float)  # YAML's int 7 reached the tokenizer
    with pytest.raises(SystemExit):  # argparse: "argument --max_steps: invalid int value: '3.5'"
        _parse("continuation", ["--config", "YAML"], "max_steps: 3.5\n", tmp_path)


def test_lora_settings_with_lora_off_are_refused_at_the_same_level(tmp_path):
    with pytest.raises(ValueError, match=r"--use_peft false turns LoRA off.*--lora_r is given on the command line"):
        _parse("continuation", ["--use_peft", "false", "--lora_r", "8"])
    with pytest.raises(ValueError, match=r"--use_peft false \(in the --config file\) turns LoRA off.*--lora_alpha, "
                                         r"--lora_dropout are given in the --config file"):
        _parse("continuation", ["--config", "YAML"], "use_peft: false\nlora_alpha: 8\nlora_dropout: 0.1\n", tmp_path)
    with pytest.raises(ValueError, match=r"--use_peft false \(in the --config file\).*--lora_r is given on the "
                                         r"command line"):
        _parse("continuation", ["--config", "YAML", "--lora_r", "8"], "use_peft: false\n", tmp_path)
    # the flag overrides the file's adapter: full fine-tuning of a LoRA config is allowed
    recipe, _ = _parse("continuation", ["--config", "YAML", "--use_peft", "false"], "lora_r: 64\n", tmp_path)
    assert not recipe.use_peft
    assert not _parse("continuation", ["--lora_r", "0"])[0].use_peft  # the old spelling of full fine-tuning


# --------------------------------------------------------------------------------------- model cards


def _snippet_output(card: str, cwd) -> str:
    import re
    import subprocess
    import sys

    code = re.search(r"```python\n(.*?)```", card, re.S).group(1)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=cwd, timeout=300,
                         env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert out.returncode == 0, code + out.stderr[-3000:]
    return out.stdout


def _saved_card(model, tmp_path, tok=None, **kw):
    trainer = GFlowNetTrainer(model, _config(tmp_path / "out", max_steps=1, **kw), processing_class=tok,
                              train_dataset=Dataset.from_dict({"prompt": ["the cat"]}), peft_config=LoraConfig(r=2))
    trainer.save_model(str(tmp_path / "saved"))
    return (tmp_path / "saved" / "README.md").read_text()


def test_the_card_of_a_model_built_in_memory_claims_no_base(tmp_path):
    tok = tiny_tokenizer()
    card = _saved_card(tiny_model("gpt2", len(tok)), tmp_path, tok)  # from a config: no name, no path
    assert "SmolLM2" not in card and "base_model:" not in card  # (it claimed SmolLM2-135M-Instruct)
    assert "A LoRA adapter on a model built in memory" in card and "base = ...  # the model the adapter" in card


def test_a_relative_local_checkpoint_is_recorded_by_its_absolute_path(tmp_path, monkeypatch):
    """'org/tiny' relative to the working directory looks like a hub id: the adapter and the card record the
    absolute path, so the card's snippet runs from anywhere (it loaded 'org/tiny' relative to the loader's
    directory, or from the hub)."""
    import json

    from gfn_trl.testing import tokenizer_kind

    tok = tokenizer_kind("byte_bpe")
    monkeypatch.chdir(tmp_path)
    tiny_model("gpt2", len(tok)).save_pretrained("org/tiny")
    tok.save_pretrained("org/tiny")
    card = _saved_card("org/tiny", tmp_path)
    base = json.loads((tmp_path / "saved" / "adapter_config.json").read_text())["base_model_name_or_path"]
    assert base == str(tmp_path / "org" / "tiny")
    assert f"references its base by the local path `{base}`" in card and "base_model:" not in card
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    assert _snippet_output(card, elsewhere).strip()


def test_a_gguf_checkpoints_card_loads_the_gguf_file(tmp_path):
    """PEFT cannot load a GGUF base by the adapter's reference: the snippet loads the file with gguf_file=."""
    from gfn_trl.testing import tiny_gguf

    path = tiny_gguf(tmp_path / "gguf")
    card = _saved_card(path, tmp_path)
    assert f"gguf_file={os.path.basename(path)!r}" in card and f"`{path}`" in card
    assert _snippet_output(card, tmp_path).strip()


# --------------------------------------------------------------------------------------- min_length_mode


def test_min_length_settings_that_change_nothing_are_warned_about(tmp_path, caplog):
    import logging

    with caplog.at_level(logging.WARNING):
        GFlowNetConfig(str(tmp_path), min_length_mode="penalize", min_completion_length=0, use_cpu=True)
    assert "min_length_mode='penalize' changes nothing with min_completion_length=0" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        GFlowNetConfig(str(tmp_path), min_length_log_reward=-10.0, use_cpu=True)  # under the default "ban_stop"
    assert "min_length_log_reward=-10.0 is unused" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):  # the paper configs' settings: nothing to say
        GFlowNetConfig(str(tmp_path), min_length_mode="penalize", min_completion_length=5, use_cpu=True)
        GFlowNetConfig(str(tmp_path), use_cpu=True)
    assert "min_length" not in caplog.text


def test_periodic_evaluation_in_a_recipe_is_refused_before_any_model_loads(tmp_path):
    """The recipes give the trainer no eval dataset: `--eval_strategy steps` failed after loading the model (and,
    in infilling, after the story LM stage) with the HF Trainer's 'pass an eval_dataset to Trainer'."""
    from gfn_trl.testing import load_recipe

    module = load_recipe("continuation")
    for argv, flag in ((["--eval_strategy", "steps", "--eval_steps", "1"], "--eval_strategy steps"),
                       (["--eval_on_start", "true"], "--eval_on_start")):
        recipe, args = _parse("continuation", ["--model_name_or_path", str(tmp_path / "absent"), *argv])
        with pytest.raises(ValueError, match=f"{flag}: the recipes pass no eval dataset to the trainer"):
            module.check(recipe, args)


@pytest.mark.parametrize("log_reward, first", [(-99.0, 2), (None, 0)])
def test_penalize_scores_prefixes_only_where_their_reward_is_read(tmp_path, log_reward, first):
    """Under min_length_mode='penalize' the loss reads every state, but those below the minimum get
    min_length_log_reward: a prefix-scoring function is not called on them (it was called on the empty latent,
    which it may not expect); with None (the reward's own value there) it is."""
    lengths_seen = []

    def words(prompts, completions, completion_ids, **kwargs):
        lengths_seen.extend(len(ids) for ids in completion_ids)
        return [float(len(c.split())) for c in completions]

    words.scores_prefixes = True
    trainer = _trainer(tmp_path, words, min_length_mode="penalize", min_completion_length=2,
                       min_length_log_reward=log_reward, max_steps=1)
    trainer.train()
    assert min(lengths_seen) == first and max(lengths_seen) == 3


def test_a_reward_functions_log_metric_cannot_overwrite_the_trainers_metrics(tmp_path):
    def logging_reward(name):
        def reward(prompts, completions, completion_ids, log_metric, **kwargs):
            log_metric(name, 7.0)
            return [0.0] * len(completions)
        return reward

    trainer = _trainer(tmp_path, logging_reward("words/mean"), eval_rows=EVAL_ROWS, loss_type="tb", max_steps=1)
    trainer.train()
    assert trainer.state.log_history[0]["words/mean"] == 7.0  # a name of its own: logged as TRL logs it
    assert trainer.evaluate()["eval_words/mean"] == 7.0
    for name in ("entropy", "loss", "learning_rate"):  # averaged with (or replacing) the trainer's own value before
        trainer = _trainer(tmp_path, logging_reward(name), eval_rows=EVAL_ROWS, loss_type="tb", max_steps=1)
        with pytest.raises(ValueError, match=rf"A reward function logged \['{name}'\] with log_metric, which the "
                                             "trainer logs itself"):
            trainer.train()
        if name != "learning_rate":  # (an evaluation logs no learning rate)
            with pytest.raises(ValueError, match=rf"logged \['{name}'\]"):
                trainer.evaluate()


# --------------------------------------------------------------------------------------- the completions table


def test_the_completions_table_prints_brackets_as_text(capsys, monkeypatch):
    """A Llama-2 chat prompt holds "[/INST]": rich took it for markup and raised a MarkupError at the first log
    (and would have styled "[bold]")."""
    pytest.importorskip("rich")
    from gfn_trl.trainers import completions

    rows = [{"step": 1, "prompt": "[INST] hi [/INST]", "latent": "a [bold]b[/bold] [/x]", "log_reward": -1.5,
             "behaviour": "on_policy", "temperature": 1.0}]
    monkeypatch.setenv("COLUMNS", "200")  # (rich wraps cells to the terminal's width)
    completions.print_table(rows, "completions at step 1 [/]")
    out = capsys.readouterr().out
    assert "[INST] hi [/INST]" in out and "a [bold]b[/bold] [/x]" in out and "[/]" in out


# --------------------------------------------------------------------------------------- the TRL baselines' reward


def test_grpo_and_rloo_take_the_contrast_penalty_the_gflownet_takes(tmp_path):
    """The subjectivity reward's contrast penalty: GRPO/RLOO were always scored with -50 (and the recipes refused
    --contrast_penalty for them), so a run with another value compared methods under different rewards."""
    from trl import GRPOConfig

    from gfn_trl.trainers.trl_baselines import build_grpo_trainer

    rows = {"prompt": ["the cat", "a dog"], "suffix": ["sat", "ran"], "contrast_suffix": ["ran", "sat"]}
    tok = tiny_tokenizer()
    words = ["the", "cat", "dog", "on", "a", "mat", "log", "and", "then", "big", "red"]
    latents = [tok(f"{a} {b}", add_special_tokens=False)["input_ids"] for a, b in zip(words, reversed(words))]
    finals = {}
    for penalty in (-7.0, -50.0):
        gfn = _trainer(tmp_path / f"gfn{penalty}", rows=rows, contrast_penalty=penalty)
        args = GRPOConfig(output_dir=str(tmp_path / f"grpo{penalty}"), per_device_train_batch_size=4,
                          num_generations=4, report_to="none", use_cpu=True, bf16=False)
        grpo = build_grpo_trainer(tiny_model("gpt2", len(tok), seed=0), args, Dataset.from_dict(rows),
                                  gfn.constraints, processing_class=tok, peft_config=LoraConfig(r=4),
                                  contrast_penalty=penalty)
        data = [gfn.train_dataset[i % 2] for i in range(len(latents))]
        z, lengths = latent_batch(latents, gfn.constraints.stop_token_id)
        want = gfn.score_latents(data, z, lengths, final_only=True)
        got = grpo.latent_reward.final_log_rewards(data, latents)
        torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
        finals[penalty] = got
    assert not torch.equal(finals[-7.0], finals[-50.0])  # the penalty applied to some latent here
    # the recipes take the flag for every trainer
    for trainer in ("grpo", "rloo", "sft"):
        assert _parse("subjectivity", ["--trainer", trainer, "--contrast_penalty", "-10"])[1].contrast_penalty == -10
    with pytest.raises(ValueError, match=r"contrast_penalty must lie in \[-1000000.0, 0\]"):
        _parse("subjectivity", ["--trainer", "grpo", "--contrast_penalty", "5"])


def test_reward_functions_of_one_name_are_logged_apart(tmp_path):
    """Two lambdas are both named '<lambda>': the second one's mean replaced the first one's under
    rewards/<lambda>/mean."""
    trainer = _trainer(tmp_path, [lambda prompts, completions, **kw: [1.0] * len(completions),
                                  lambda prompts, completions, **kw: [3.0] * len(completions)],
                       loss_type="tb", max_steps=1)
    assert trainer.reward_functions.names == ["<lambda>", "<lambda>_1"]
    trainer.train()
    logged = trainer.state.log_history[0]
    assert logged["rewards/<lambda>/mean"] == 1.0 and logged["rewards/<lambda>_1/mean"] == 3.0
