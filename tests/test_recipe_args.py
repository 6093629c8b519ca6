"""The recipes' command line: TRL's `ModelConfig` for the model flags, the flags of other tasks refused, the CPU
defaults kept out of `--config` runs (issue 15 item 3), and a `--help` that imports no task, model or metric code."""

import subprocess
import sys
from dataclasses import asdict, fields
from pathlib import Path

import pytest
import yaml

from gfn_trl.testing import load_recipe

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "recipes" / "configs"
PAPER = ["continuation_gpt2-xl.yaml", "infill_gpt2-large.yaml", "subjectivity_gpt-j.yaml", "arithmetic_gpt-j.yaml"]


def parse(task: str, argv: list[str]):
    module = load_recipe(task)
    return module.make_parser(argv).parse_args_and_config(args=argv)


def _values(obj) -> dict:
    return obj.to_dict() if hasattr(obj, "to_dict") else asdict(obj)


@pytest.mark.parametrize("config", PAPER)
def test_a_config_run_takes_the_yaml_and_the_library_defaults_only(config):
    """Every parsed value is the YAML's or the dataclass's own default: none of the recipe's CPU defaults leaks in."""
    task = config.split("_")[0]
    spec = yaml.safe_load((CONFIGS / config).read_text())
    parsed = parse(task, ["--config", str(CONFIGS / config)])
    leaked_somewhere = False
    for obj in parsed:
        cls = type(obj)
        mine = {f.name: spec[f.name] for f in fields(cls) if f.init and f.name in spec}
        expected = _values(cls(**mine))  # the YAML's values, the class's defaults for the rest
        got = _values(obj)
        assert got == expected, {k: (got[k], expected[k]) for k in got if got[k] != expected[k]}
        cpu = load_recipe(task).CPU_DEFAULTS
        leaked_somewhere |= any(k in got and k not in spec and got[k] == v != expected.get(k) for k, v in cpu.items())
    assert not leaked_somewhere


def test_the_gpt2_xl_config_keeps_the_prompts_trailing_space():
    """The paper's continuation prompts end with a space; only the SmolLM2 CPU default strips it."""
    from gfn_trl.tasks.base import RunContext
    from gfn_trl.tasks.continuation import TASK

    def prompts(argv):
        recipe, args = parse("continuation", argv)
        ctx = RunContext(recipe, args, None)
        return TASK.to_contract(ctx, TASK.load(ctx))["prompt"]

    paper = prompts(["--config", str(CONFIGS / "continuation_gpt2-xl.yaml")])
    assert len(paper) >= 50 and all(p.endswith(" ") for p in paper)
    cpu = prompts([])  # the CPU demo: SmolLM2 would split ' 2' into ' ' + '2'
    assert cpu and not any(p.endswith(" ") for p in cpu)
    assert [p.rstrip(" ") for p in paper[: len(cpu)]] == cpu


def test_model_flags_are_trls_model_config():
    from peft import LoraConfig
    from trl import ModelConfig

    from gfn_trl.runner import peft_config

    recipe, args = parse("continuation", [
        "--lora_target_modules", "q_proj", "--use_rslora", "--lora-r", "8", "--lora_alpha", "4", "--load_in_4bit",
        "--model_revision", "v1", "--attn_implementation", "eager", "--dtype", "auto", "--trust_remote_code"])
    assert isinstance(recipe, ModelConfig)
    assert recipe.lora_target_modules == ["q_proj"]  # one name stays a name, not TRL's regex string
    assert args.load_in_4bit is True  # a field both ModelConfig and GFlowNetConfig have: one flag, both get it
    assert (recipe.model_revision, recipe.attn_implementation, recipe.dtype) == ("v1", "eager", "auto")
    assert recipe.trust_remote_code is True
    lora = peft_config(recipe)
    assert isinstance(lora, LoraConfig) and (lora.r, lora.lora_alpha, lora.use_rslora) == (8, 4, True)
    assert lora.target_modules == {"q_proj"} and lora.task_type == "CAUSAL_LM"
    # the recipes' defaults (LoRA on; the old spelling of full fine-tuning, --lora_r 0, still works)
    default, _ = parse("continuation", [])
    assert default.use_peft and (default.lora_r, default.lora_alpha, default.lora_dropout) == (16, 16, 0.0)
    assert peft_config(parse("continuation", ["--lora_r", "0"])[0]) is None
    assert peft_config(parse("continuation", ["--use_peft", "false"])[0]) is None


def test_flags_of_other_tasks_are_refused_with_the_recipe_that_takes_them():
    with pytest.raises(ValueError, match="--decoding is a flag of the continuation recipe only"):
        parse("infill", ["--decoding", "greedy"])
    with pytest.raises(ValueError, match="--strip_trailing_space is a flag of the continuation recipe only"):
        parse("arithmetic", ["--strip_trailing_space", "true"])
    with pytest.raises(ValueError, match="--ban_newlines is a flag of the infill and subjectivity recipe"):
        parse("continuation", ["--ban_newlines", "false"])
    with pytest.raises(ValueError, match="--not_a_flag is not a flag of this recipe"):
        parse("infill", ["--not_a_flag", "1"])
    assert parse("continuation", ["--decoding", "greedy"])[0].decoding == ["greedy"]


def test_help_imports_no_task_model_or_metric_code():
    """`--help` builds the parser from the argument dataclasses only: the task, its metrics, the rewards, the HF
    Trainer and the model classes are imported when the run starts.  (PEFT, which transformers' TrainingArguments
    imports, still loads `transformers.modeling_utils`.)"""
    probe = ("import importlib.util, sys; sys.argv = ['infill.py']\n"
             "spec = importlib.util.spec_from_file_location('recipe_infill', 'recipes/infill.py')\n"
             "module = importlib.util.module_from_spec(spec); spec.loader.exec_module(module)\n"
             "assert '--seed_gold' in module.make_parser().format_help()\n"
             "print(sorted(m for m in sys.modules if m == 'transformers.trainer' or m.startswith(("
             "'gfn_trl.tasks.', 'gfn_trl.evaluation', 'gfn_trl.rewards', 'gfn_trl.models', 'gfn_trl.sampling', "
             "'transformers.models.llama'))))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT,
                         env={"HF_HUB_OFFLINE": "1", "PATH": ""}, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
