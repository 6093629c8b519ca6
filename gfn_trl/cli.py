"""The `gfn-trl` command: the recipes by name, as TRL has `trl grpo`.

    gfn-trl infill                                   # accelerate launch recipes/infill.py (embedded default)
    gfn-trl arithmetic --trainer ppo --max_steps 50  # any recipe flag passes through
    gfn-trl infill --config recipes/configs/infill_gpt2-large.yaml --accelerate_config zero3
    gfn-trl compare --task infill --trainers gfn sft -- --seed 1
    gfn-trl infill --help                            # the recipe's own flags

A task runs `accelerate launch [--config_file <accelerate config>] recipes/<task>.py <flags>`; `compare` runs
`recipes/compare.py`, whose runs use the same accelerate config.  `--accelerate_config` takes a shipped name
(`zero3`, `fsdp2`, `cpu_2proc`, ...: the files of `accelerate_configs/`) or a path.  The recipes are scripts of the
source checkout (`pip install -e .`), not of the installed package.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

from .tasks import TASKS

# Short names for the shipped accelerate configs (every file stem is a name too).
ALIASES = {"zero2": "deepspeed_zero2", "zero3": "deepspeed_zero3", "fsdp": "fsdp2", "ddp": "multi_gpu"}


def checkout_root() -> Path:
    """The source checkout holding `recipes/` and `accelerate_configs/`.

    Raises:
        SystemExit: the package is installed without its checkout (a wheel), so there are no recipes to run.
    """
    root = Path(__file__).resolve().parents[1]
    if not (root / "recipes").is_dir():
        raise SystemExit(
            "gfn-trl runs the recipes of a source checkout, and none is next to this installation "
            f"({Path(__file__).parent}). Clone the repository and install it with `pip install -e \".[recipes]\"`."
        )
    return root


def shipped_accelerate_configs(root: Path) -> dict[str, Path]:
    files = {p.stem: p for p in sorted((root / "accelerate_configs").glob("*.yaml"))}
    return {**files, **{alias: files[stem] for alias, stem in ALIASES.items() if stem in files}}


def resolve_accelerate_config(value: str, root: Path) -> Path:
    """A shipped config's name (`zero3`, `deepspeed_zero3`, ...) or an existing file.

    Raises:
        SystemExit: neither; the message lists the shipped names.
    """
    shipped = shipped_accelerate_configs(root)
    if value in shipped:
        return shipped[value]
    if Path(value).is_file():
        return Path(value).resolve()
    raise SystemExit(
        f"--accelerate_config {value!r} is neither a shipped config nor a file. Shipped: {', '.join(sorted(shipped))}."
    )


def _accelerate_launch() -> list[str]:
    """`accelerate launch` of this environment (its module where the console script is not on the path)."""
    exe = shutil.which("accelerate", path=os.path.dirname(sys.executable)) or shutil.which("accelerate")
    return [exe, "launch"] if exe else [sys.executable, "-m", "accelerate.commands.launch"]


def launch_command(task: str, flags: list[str], accelerate_config: Path | None, root: Path) -> list[str]:
    """The command that runs one recipe."""
    launcher = _accelerate_launch()
    if accelerate_config is not None:
        launcher += ["--config_file", str(accelerate_config)]
    else:  # what a bare `accelerate launch` would guess, said explicitly so that it does not warn about each one
        launcher += ["--num_processes", "1", "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    return [*launcher, str(root / "recipes" / f"{task}.py"), *flags]


def compare_command(flags: list[str], accelerate_config: Path | None, root: Path) -> list[str]:
    cmd = [sys.executable, str(root / "recipes" / "compare.py")]
    if accelerate_config is not None:
        cmd += ["--launcher", shlex.join([*_accelerate_launch(), "--config_file", str(accelerate_config)])]
    return cmd + flags


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="gfn-trl", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, add_help=False
    )
    p.add_argument("command", nargs="?", choices=(*TASKS, "compare"), metavar="{" + ",".join((*TASKS, "compare")) + "}",
                   help="a task recipe, or compare (several trainers on one task, one table and plot)")
    p.add_argument("--accelerate_config", metavar="NAME|PATH",
                   help="accelerate config: a shipped name (zero2, zero3, fsdp2, cpu_2proc, ...) or a file")
    p.add_argument("--dry_run", action="store_true", help="print the command instead of running it")
    p.add_argument("-h", "--help", action="store_true", help="this help; after a task, the recipe's own flags")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = _parser()
    known, flags = parser.parse_known_args(argv)
    if known.command is None:
        parser.print_help()
        if not known.help:
            print("\ngfn-trl: error: name a task or compare", file=sys.stderr)
        return 0 if known.help else 2
    root = checkout_root()
    config = resolve_accelerate_config(known.accelerate_config, root) if known.accelerate_config else None
    if known.help:  # the recipe's own --help, without a launcher around it
        script = "compare.py" if known.command == "compare" else f"{known.command}.py"
        cmd = [sys.executable, str(root / "recipes" / script), "--help", *flags]
    elif known.command == "compare":
        cmd = compare_command(flags, config, root)
    else:
        cmd = launch_command(known.command, flags, config, root)
    if known.dry_run:
        print(shlex.join(cmd))
        return 0
    env = {**os.environ, "HF_HUB_DISABLE_TELEMETRY": "1", "GFN_TRL_CLI": "1"}  # GFN_TRL_CLI: `gfn-trl <task>` in usage
    return subprocess.run(cmd, env=env).returncode


if __name__ == "__main__":
    sys.exit(main())
