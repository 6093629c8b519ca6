"""gfn_trl/tasks/arithmetic.py and recipes/arithmetic.py: problems, splits, text formats, answers, vocabulary mask,
data files, configs, and a CI-sized end-to-end run of the recipe."""

import json
import random
import sys
from pathlib import Path

import pytest
import torch

from gfn_trl.evaluation import Scored
from gfn_trl.sampling import LatentConstraints
from gfn_trl.tasks import arithmetic as A
from gfn_trl.testing import load_recipe

ROOT = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------ problems and splits


def test_generator_is_deterministic_and_in_range():
    a, b = A.make_splits(3, 50, 20, n_shots=3), A.make_splits(3, 50, 20, n_shots=3)
    assert a == b
    assert A.make_splits(4, 50, 20, n_shots=3) != a
    assert {k: len(v) for k, v in a.items()} == {"test_3": 20, "test_4": 20, "test_5": 20, "shots": 3, "train": 50}
    assert {p.n_operands for p in a["train"] + a["shots"]} == {3, 4}
    for k in (3, 4, 5):
        assert {p.n_operands for p in a[f"test_{k}"]} == {k}
    for split in a.values():
        assert len(set(split)) == len(split)  # distinct
        for p in split:
            assert all(0 <= x <= 9 for x in p.operands) and set(p.operators) <= {"+", "-"}


def test_no_overlap_between_tests_and_train():
    s = A.make_splits(0, 3000, 500, n_shots=3)  # large enough that a naive draw would collide
    train = set(s["train"]) | set(s["shots"])
    for k in (3, 4, 5):
        assert not train & set(s[f"test_{k}"])
    with pytest.raises(AssertionError, match="test_3"):
        A.check_disjoint({"train": s["train"][:5], "test_3": [s["train"][0]]})
    with pytest.raises(ValueError, match="distinct"):
        A.make_splits(0, 10, 4001)  # only 4000 three-operand problems exist


def test_left_to_right_evaluation_and_gold_rationale():
    p = A.parse_question("Question: 6 - 0 - 4 - 8 = ? Answer:")
    assert p.operands == (6, 0, 4, 8) and p.operators == ("-", "-", "-") and p.answer == -6
    assert A.gold_rationale(p) == " 6 - 0 = 6, 6 - 4 = 2, 2 - 8 = -6"
    # every operand is used (the authors' tool dropped one: their defect 4)
    q = A.parse_question("9 - 3 + 6 - 1 + 2")
    assert q.answer == 13 and A.gold_rationale(q) == " 9 - 3 = 6, 6 + 6 = 12, 12 - 1 = 11, 11 + 2 = 13"
    assert A.parse_question("5 - 7 + 2").answer == 0  # left to right, not 5 - (7 + 2)
    rng = random.Random(0)
    for _ in range(300):
        p = A.random_problem(rng, rng.choice([2, 3, 4, 5]))
        assert p.answer == eval(p.expression)  # + and - are left-associative in Python
        assert A.extract_answer(A.gold_rationale(p)) == p.answer
        assert A.gold_rationale(p).count("=") == p.n_operands - 1


def test_query_solution_few_shot_prompt_and_contract():
    shots = [A.parse_question("6 - 0 - 4 - 8"), A.parse_question("1 + 2 + 3")]
    assert shots[0].query == "Question: 6 - 0 - 4 - 8 = ? Answer:"
    assert A.solution(-6) == ". The answer is -6."
    assert A.few_shot_prompt(shots) == (
        "Question: 6 - 0 - 4 - 8 = ? Answer: 6 - 0 = 6, 6 - 4 = 2, 2 - 8 = -6. The answer is -6.\n"
        "Question: 1 + 2 + 3 = ? Answer: 1 + 2 = 3, 3 + 3 = 6. The answer is 6.\n"
    )
    assert A.few_shot_prompt([]) == ""
    p = A.parse_question("7 - 9 + 1")
    row = A.to_contract([p], shots)[0]
    assert row["prompt"] == "Question: 7 - 9 + 1 = ? Answer:"  # the policy sees no demonstrations
    assert row["reward_prompt"] == A.few_shot_prompt(shots) + row["prompt"]
    assert row["suffix"] == ". The answer is -1." and row["answer"] == -1
    assert row["gold"] == " 7 - 9 = -2, -2 + 1 = -1"
    assert A.to_contract([p], shots, prompt_shots=shots)[0]["prompt"] == row["reward_prompt"]  # k-shot baseline


@pytest.mark.parametrize("text, expected", [
    (" 6 - 0 = 6, 6 - 4 = 2, 2 - 8 = -6", -6),
    (" 2 - 8 = -16.", -16),
    (" 3 + 4 = 7, 7 - 9 =", None),  # nothing after the last "=" and the last word is "=": no answer
    (" 6 - 0 = 6, 6 - 4", 4),  # cut mid-step: the last word, as the authors read it (not the last result, 6)
    (" 6 - 0 = 6,", None),  # "6," is not an integer
    (" 2 - 8 = -", None),
    (" 5 - 12", 12),  # no "=": the last word
    (" 5 -12", -12),
    ("=-3", -3),
    (" 10. 10.", 10),
    (" 6 .", None),  # the last word is "."
    ("", None),
    (" , . = ", None),
    (" = = -", None),
])
def test_extract_answer(text, expected):
    assert A.extract_answer(text) == expected


def _authors_extract_answer(str_answer):
    """The authors' function (GFNOrg/gfn-lm-tuning, infill_subj_arithmetic/utils.py), restated: int of the text after
    the last "=", else of the last word, each stripped of spaces then "."; -1 when neither parses.  They call it on
    the decoded query + rationale."""
    for piece in (lambda: str_answer.split("=")[-1], lambda: str_answer.split()[-1]):
        try:
            return int(piece().strip().strip("."))
        except (ValueError, IndexError):
            continue
    return -1


def test_extract_answer_reads_rationales_as_the_authors_do():
    """On every prefix of many rationales (complete, cut mid-step, cut after a comma, ...), ours equals theirs called
    on the query followed by the rationale, with their -1 for "no answer" as our None."""
    rng = random.Random(0)
    query = "Question: 6 - 0 - 4 - 8 = ? Answer:"
    texts = set()
    for p in A.make_splits(0, 40, 5)["train"]:
        gold = A.gold_rationale(p)
        texts.update(gold[:k] for k in range(len(gold) + 1))
    texts.update(" " + " ".join(rng.choice(["6", "-", "+", "=", ",", ".", "12", "-3", "6."]) for _ in range(5))
                 for _ in range(300))
    assert len(texts) > 500
    cut_mid_step = 0
    for text in texts:
        theirs = _authors_extract_answer(query + text)
        ours = A.extract_answer(text)
        assert (ours if ours is not None else -1) == theirs, text
        cut_mid_step += text.rstrip().endswith(("- 4", "+ 4")) and ours == 4
    assert cut_mid_step  # cut mid-step rationales are among them


def test_evaluate_majority_vote_from_rationales():
    rows = [{"answer": -6}, {"answer": 3}]
    scored = [
        Scored(rows[0], [[1]] * 3, [" 6 - 0 = 6, 6 - 4 = 2, 2 - 8 = -6", " 2 - 8 = -6", " 1 = 5"], [-1.0, -2.0, -3.0]),
        Scored(rows[1], [[1]] * 3, [" 1 + 1 = 2", "", " 1 + 1 = 2"], [-4.0, -5.0, -6.0]),
    ]
    m = A.evaluate(scored)
    assert m["accuracy"] == 0.5 and m["sample_accuracy"] == pytest.approx(2 / 6) and m["parsed"] == pytest.approx(5 / 6)
    assert m["log_likelihood/mean"] == pytest.approx((-2.0 - 5.0) / 2)
    assert m["log_likelihood/max"] == pytest.approx((-1.0 - 4.0) / 2)


# ------------------------------------------------------------------ tokenizer


def test_vocab_mask_on_smollm2(smollm2_tokenizer):
    tok = smollm2_tokenizer
    mask = A.vocab_mask(tok)
    assert mask.dtype == torch.bool and mask.shape == (len(tok),)
    assert mask[tok.eos_token_id]
    allowed = [tok.decode([i]) for i in mask.nonzero().flatten().tolist() if i != tok.eos_token_id]
    assert allowed and all(set(t) <= set(" ,.0123456789=+-") and t for t in allowed)
    for i in tok.all_special_ids:
        assert not mask[i] or i == tok.eos_token_id
    # every gold rationale and answer can be written; letters and newlines cannot
    ids = tok(A.gold_rationale(A.parse_question("0 - 9 - 9 + 9 + 9")), add_special_tokens=False)["input_ids"]
    assert mask[ids].all()
    for text in (" The", "\n", " answer", "?", " x"):
        assert not mask[tok(text, add_special_tokens=False)["input_ids"]].all()
    # the latent budget holds the longest gold rationale of each length
    rng = random.Random(1)
    for n in (3, 4, 5):
        budget = A.rationale_token_budget(tok, n)
        texts = [A.gold_rationale(A.random_problem(rng, n)) for _ in range(300)]
        assert max(len(x) for x in tok(texts, add_special_tokens=False)["input_ids"]) <= budget
    assert A.rationale_token_budget(tok, 4) == 31  # CPU_DEFAULTS' max_completion_length


# ------------------------------------------------------------------ data files


def test_load_json_and_jsonl(tmp_path):
    paper = [{"str_query": "Question: 6 - 0 - 4 - 8 = ? Answer:", "num_sol": -6, "str_sol": ". The answer is -6."},
             {"str_query": "Question: 9 + 4 - 8 = ? Answer:", "num_sol": 5, "str_rationale": "9 + 4 =, 13 - 8 ="}]
    (tmp_path / "paper.json").write_text(json.dumps(paper))
    assert [p.expression for p in A.load_problems(tmp_path / "paper.json")] == ["6 - 0 - 4 - 8", "9 + 4 - 8"]
    lines = ['{"question": "6 - 0 - 4 - 8", "answer": -6}', "",
             '{"question": "1+2", "answer": "3", "rationale": " 1 + 2 = 3"}']
    (tmp_path / "plain.jsonl").write_text("\n".join(lines))
    problems = A.load_problems(tmp_path / "plain.jsonl")
    assert [p.answer for p in problems] == [-6, 3] and problems[1].expression == "1 + 2"


@pytest.mark.parametrize("content, suffix, match", [
    ('{"question": "1 + 2", "answer": 3}', ".json", "must hold a JSON list"),
    ("[{\"question\": \"1 + 2\", ", ".json", "not valid JSON"),
    ("[]", ".json", "holds no problems"),
    ('{"question": "1 + 2", "answer": 3}\n{"question": 1 + 2}', ".jsonl", "line 2 is not valid JSON"),
    ('[{"question": "1 + 2"}]', ".json", r"row 0: needs a 'question' \(or 'str_query'\) and an 'answer'"),
    ('[{"question": "1 + 2", "answer": 3}, {"question": "2 * 3", "answer": 6}]', ".json", "row 1: question '2 \\* 3'"),
    ('[{"question": "1 + 2", "answer": 4}]', ".json", "answer 4 but 1 \\+ 2 evaluates left to right to 3"),
    ('[{"question": "1 + 2", "answer": 3.5}]', ".json", "'answer' must be an integer"),
    ('[{"question": "1 + 2", "answer": "three"}]', ".json", "'answer' must be an integer"),
    ('[{"question": "-1 + 2", "answer": 1}]', ".json", "non-negative integers joined by"),
    ('[{"question": "7", "answer": 7}]', ".json", "non-negative integers joined by"),
    ('[{"question": "1 + 2", "answer": 3, "rationale": 5}]', ".json", "'rationale' must be text"),
    ('["1 + 2"]', ".json", "expected an object"),
])
def test_malformed_files_give_clear_errors(tmp_path, content, suffix, match):
    path = tmp_path / f"bad{suffix}"
    path.write_text(content)
    with pytest.raises(ValueError, match=match):
        A.load_problems(path)


def test_load_splits_from_files_removes_test_problems_from_train(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        A.load_problems(tmp_path / "missing.json")
    rng = random.Random(0)
    tests = {k: A.generate_problems(rng, 6, [k]) for k in (3, 4, 5)}
    train = A.generate_problems(rng, 40, [3, 4], exclude=[p for t in tests.values() for p in t])
    row = lambda p: {"str_query": p.query, "num_sol": p.answer}  # noqa: E731
    # the paper's directory layout; its test files overlap its training pool, which we undo
    (tmp_path / "1digit_34_op+-_hw.json").write_text(json.dumps([row(p) for p in train + tests[3][:2]]))
    for k, name in A.PAPER_TEST_FILES.items():
        (tmp_path / name).write_text(json.dumps([row(p) for p in tests[k]]))
    s = A.load_splits(str(tmp_path), seed=0, n_train=None, n_test_per_length=5, n_shots=3)
    assert s["shots"] == train[:3] and s["train"] == train[3:]
    assert all(s[f"test_{k}"] == tests[k][:5] for k in (3, 4, 5))
    # one file: the first problems of each length are the tests, the rest (3-4 operands) the train set
    mixed = tmp_path / "mixed.jsonl"
    mixed.write_text("\n".join(json.dumps({"question": p.expression, "answer": p.answer})
                               for p in tests[5] + tests[3] + tests[4] + train))
    s = A.load_splits(str(mixed), seed=0, n_train=10, n_test_per_length=4, n_shots=3)
    assert all(s[f"test_{k}"] == tests[k][:4] for k in (3, 4, 5))
    assert s["shots"] == tests[3][4:] + tests[4][4:5] and s["train"] == (tests[4][5:] + train)[:10]
    assert {p.n_operands for p in s["train"]} <= {3, 4}
    A.check_disjoint(s)
    with pytest.raises(FileNotFoundError, match="paper's files"):
        (tmp_path / "empty").mkdir()
        A.load_splits(str(tmp_path / "empty"), 0, None, 5)


# ------------------------------------------------------------------ recipe


@pytest.mark.parametrize("config", ["arithmetic_gpt-j.yaml", "arithmetic_smollm2.yaml"])
def test_configs_parse(config, monkeypatch):
    recipe = load_recipe("arithmetic")
    monkeypatch.setattr(sys, "argv", ["arithmetic.py", "--config", str(ROOT / "recipes" / "configs" / config)])
    r, a, task = recipe.make_parser().parse_args_and_config()
    assert task.calculator  # the paper's tool is on in both
    assert a.min_completion_length == 5 and a.reward_temperature_start == 1.1 and a.reward_temperature_end == 0.5
    assert r.eval_temperature == 0.1
    if "gpt-j" in config:
        assert r.model_name_or_path == "nlpcloud/instruct-gpt-j-fp16" and r.dtype == "bfloat16"
        assert (r.lora_r, r.lora_alpha, r.lora_dropout) == (64, 16, 0.1)
        assert r.lora_target_modules == ["q_proj", "k_proj", "v_proj", "out_proj"]
        assert (a.learning_rate, a.warmup_steps, a.lr_scheduler_type.value) == (1e-4, 20, "constant_with_warmup")
        assert (a.num_generations, a.per_device_train_batch_size) == (16, 1)
        assert (a.gradient_accumulation_steps, a.max_steps) == (32, 2000)
        assert a.reward_temperature_horizon == 150 and (r.num_eval, r.eval_samples) == (500, 10)
        assert (a.on_policy_prob, a.replay_prob, a.tempered_prob) == (0.25, 0.25, 0.5)
        assert (a.sampling_temperature_min, a.sampling_temperature_max) == (0.5, 2.0)
        assert a.replay_buffer_size == 50 and a.replay_prioritized
    else:
        assert r.model_name_or_path is None and a.max_completion_length == 31
        for key, value in recipe.CPU_DEFAULTS.items():  # the YAML is the default, written out
            if key not in ("output_dir", "report_to", "save_strategy"):  # the last two are converted by the parser
                assert getattr(r if hasattr(r, key) else a if hasattr(a, key) else task, key) == value, key


@pytest.mark.slow
def test_offline_default_runs_end_to_end(tmp_path, monkeypatch):
    recipe = load_recipe("arithmetic")
    monkeypatch.setattr(sys, "argv", [
        "arithmetic.py", "--output_dir", str(tmp_path), "--max_steps", "2", "--num_eval", "1", "--eval_samples", "2",
        "--num_train", "4", "--num_generations", "2", "--max_completion_length", "8", "--use_cpu", "true",
        "--rationale_lm_steps", "1", "--num_rationale", "4", "--rationale_lm_cache", str(tmp_path / "cache"),
    ])
    metrics = recipe.main(*recipe.make_parser().parse_args_and_config())
    saved = json.loads((tmp_path / "metrics.json").read_text())["metrics"]
    assert saved == json.loads(json.dumps(metrics))
    assert set(saved) == {"prompting", "3-shot", "gfn"}
    for method in saved:
        for split in ("test3", "test4", "ood5"):
            assert 0.0 <= saved[method][f"{split}/accuracy"] <= 1.0
            assert saved[method][f"{split}/log_likelihood/mean"] < 0
    samples = [json.loads(line) for line in (tmp_path / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 3 * 3 and all(len(s["samples"]) == 2 for s in samples)
    allowed = set(" ,.0123456789=+-")
    assert all(set(t) <= allowed for s in samples for t in s["samples"])
    assert (tmp_path / "adapter_model.safetensors").exists()
    # the calculator (on by default) wrote the result after every '=' of every method's samples (unless cut by the
    # latent budget), so every answer read after an '=' is right for the expression before it
    for text in (t for s in samples for t in s["samples"]):
        for k in range(len(text)):
            if text[k] == "=":
                after = text[k + 1 :].split(",")[0]
                result = A.calculator_result(text[: k + 1])
                if result is not None and after.strip():
                    assert result.startswith(after.rstrip()) or after.startswith(result), text


def test_trl_trainers_refuse_the_calculator_with_the_fix(tmp_path, monkeypatch):
    recipe = load_recipe("arithmetic")
    monkeypatch.setattr(sys, "argv", ["arithmetic.py", "--trainer", "grpo", "--output_dir", str(tmp_path),
                                      "--max_steps", "1", "--num_train", "2", "--num_eval", "1", "--use_cpu", "true"])
    with pytest.raises(ValueError, match="--calculator false"):
        recipe.main(*recipe.make_parser().parse_args_and_config())


def test_final_likelihood_matches_the_packed_reward():
    """The recipe evaluates with `LikelihoodReward.final` (one copy of Y): the packed per-prefix value at k = n."""
    from gfn_trl.rewards import LikelihoodReward
    from gfn_trl.testing import tiny_model

    model = tiny_model("llama", 24, init_std=0.5).eval()
    reward = LikelihoodReward(None, model, 0, 0)
    rows = [{"reward_prompt_ids": [3, 4, 5, 6, 7][:k], "suffix_ids": [8, 9, 10][:m], "gfn_has_suffix": True}
            for k, m in ((5, 3), (2, 1), (3, 2))]
    z = torch.randint(2, 24, (3, 6), generator=torch.Generator().manual_seed(0))
    lengths = torch.tensor([6, 0, 3])
    z[1:, :] = torch.where(torch.arange(6)[None, :] < lengths[1:, None], z[1:, :], 0)  # stop-padded
    full = reward(rows, z, lengths)
    fast = reward.final(rows, z, lengths)
    idx = torch.arange(3)
    assert fast.shape == (3,)
    assert torch.allclose(fast, full[idx, lengths], atol=1e-5)
    assert (fast < 0).all()


def test_calculator_fires_on_the_authors_tokens_only(smollm2_tokenizer):
    """The authors' calculator fires on the ids of "=" and " =" only; SmolLM2's vocabulary also has tokens that end in
    "=" and that the arithmetic mask allows ("==", " +=", " -=", "===="): they must not fire it."""
    tok = smollm2_tokenizer
    tool = A.calculator(tok)
    allowed = A.vocab_mask(tok)
    texts = tok.batch_decode([[i] for i in range(len(tok))], clean_up_tokenization_spaces=False)
    fires = {texts[i] for i in range(len(tok)) if tool.fires(i)}
    assert fires == {"=", " ="}
    assert {tok.encode(" =")[-1], tok.encode("=")[-1]} == {i for i in range(len(tok)) if tool.fires(i)}
    ends_in_eq = {t for i, t in enumerate(texts) if t.rstrip().endswith("=") and bool(allowed[i])}
    assert {"==", " +=", " -=", "===="} <= ends_in_eq  # in the latent vocabulary, yet not the calculator's trigger
    # a rationale that writes " +=" gets no result after it; " =" and "=" do
    for text, fired in ((" 6 +=", False), (" 6 ==", False), (" 6 - 0 =", True), (" 6 - 0=", True)):
        latent = tok.encode(text, add_special_tokens=False)
        assert (tool.forced_tokens(latent)[-1] >= 0) == fired, text


def test_gold_weight_repeats_the_seeded_problems(smollm2_tokenizer):
    from types import SimpleNamespace

    from gfn_trl.tasks.base import RunContext, TaskData

    tok = smollm2_tokenizer
    splits = A.make_splits(0, 30, 2, 3)
    data = TaskData(splits["train"], {}, {"shots": splits["shots"]})
    sizes = {}
    for weight in (1, 5):
        ctx = RunContext(SimpleNamespace(trainer="gfn"), SimpleNamespace(max_completion_length=40),
                         SimpleNamespace(calculator=True, gold_weight=weight, num_gold=A.N_GOLD), tokenizer=tok,
                         tool=A.calculator(tok))
        rows = A.TASK.to_contract(ctx, data)
        seeds = A.TASK.replay_seeds(ctx, data).latents
        assert len(seeds) == len(rows)  # one entry per training row, as seed_replay_buffer needs
        gold = {A.gold_rationale(p) for p in splits["train"][: A.N_GOLD]}
        assert sum(g in gold for g in rows["gold"]) == A.N_GOLD * weight
        assert [bool(s) for s in seeds] == [i < A.N_GOLD for i in range(len(rows))]
        sizes[weight] = len(rows)
    assert sizes == {1: 30, 5: 30 + 4 * A.N_GOLD}
    # SFT fine-tunes on the rationales the run is given, the first --num_gold problems', never the others'
    ctx.recipe.trainer = "sft"
    rows = A.TASK.to_contract(ctx, data)
    assert rows["gold"] == [A.gold_latent(tok, p, ctx.tool) for p in splits["train"][: A.N_GOLD]]  # as sampled
    ctx.task_args.num_gold = -1
    assert len(A.TASK.to_contract(ctx, data)) == 30
    ctx.task_args.num_gold = 0  # refused before any model loads
    ctx.task_args.rationale_lm_steps = 0
    with pytest.raises(ValueError, match="--trainer sft with --num_gold 0"):
        A.TASK.check(ctx)
    with pytest.raises(ValueError, match="--gold_weight must be an integer >= 1"):
        A.TASK.check(RunContext(None, None, SimpleNamespace(calculator=True, gold_weight=0)))


def test_calculator_gold_latents_are_what_the_sampler_writes(smollm2_tokenizer):
    tok = smollm2_tokenizer
    tool = A.calculator(tok)
    c = LatentConstraints(tok.eos_token_id, 40, 5, A.vocab_mask(tok), tool)
    for p in A.make_splits(0, 30, 5)["train"]:
        gold = A.gold_latent(tok, p, tool)
        assert tok.decode(gold) == A.gold_rationale(p)
        assert c.admits(gold)
        forced = tool.forced_tokens(gold)
        assert sum(f >= 0 for f in forced) >= p.n_operands - 1  # each partial result is the calculator's
        assert A.extract_answer(tok.decode(gold)) == p.answer


@pytest.mark.parametrize("kind", ["llama", "smollm2"])
def test_sft_trains_on_the_latents_the_calculator_lets_the_policy_write(kind):
    """--trainer sft with the calculator fine-tuned on the gold rationale's text tokenized as one piece, not as the
    sampler writes it (the policy's pieces and the calculator's outputs tokenized apart, `gold_latent`): a
    SentencePiece tokenizer merges a result with the comma after it ("▁6,"), a token the policy never writes under
    the calculator (it writes "," after the calculator's "▁6"), so SFT was trained on latents the run cannot
    produce.  SFT's gold latents are now `gold_latent`'s ids, admitted by the run's constraints."""
    from types import SimpleNamespace

    from gfn_trl.tasks.base import RunContext, TaskData
    from gfn_trl.testing import tokenizer_kind
    from gfn_trl.tokenization import encode_continuation, token_texts
    from gfn_trl.trainers.trl_baselines import sft_dataset

    tok = tokenizer_kind(kind)
    tool, texts = A.calculator(tok), token_texts(tok)
    splits = A.make_splits(0, 30, 2, 3)
    data = TaskData(splits["train"], {}, {"shots": splits["shots"]})
    ctx = RunContext(SimpleNamespace(trainer="sft"), SimpleNamespace(max_completion_length=40),
                     SimpleNamespace(calculator=True, gold_weight=1, num_gold=-1), tokenizer=tok, tool=tool)
    rows = A.TASK.to_contract(ctx, data)
    c = LatentConstraints(tok.eos_token_id, 40, 5, A.vocab_mask(tok), tool)
    merged = 0
    for p, ex in zip(splits["train"], sft_dataset(rows, tok, tok.eos_token_id, "gold")):
        latent = ex["input_ids"][sum(1 for m in ex["completion_mask"] if not m):-1]
        assert latent == A.gold_latent(tok, p, tool) and c.admits(latent)
        assert "".join(texts[t] for t in latent) == A.gold_rationale(p)  # mid-sequence (a lone decode drops "▁")
        merged += encode_continuation(tok, A.gold_rationale(p)) != latent
    assert merged == (2 if kind == "llama" else 0)  # the problems whose text-as-one-piece differs (probe, 30 problems)
    ctx.task_args.calculator = False  # without the calculator the policy writes the whole text: one piece
    ctx.tool = None
    rows = A.TASK.to_contract(ctx, data)
    assert [list(g) for g in rows["gold"]] == [encode_continuation(tok, A.gold_rationale(p)) for p in splits["train"]]
