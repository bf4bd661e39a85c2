"""mkdocs hook: the CLI and config reference, written at build time from the code and the shipped files.

``<!-- cli-reference -->`` becomes every ``ichor`` subcommand with its ``--help`` text (the
trainer commands by their one-line summary: their options are Lightning's, ``ichor fit --help``);
``<!-- configs-reference -->`` becomes every YAML file under ``lightning_configs/`` with its
opening comment, the file's own statement of what it is for. A config without one is logged as a
warning, which ``mkdocs build --strict`` turns into a failed build.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
from pathlib import Path
from typing import Any
from unittest import mock

CLI_MARKER = "<!-- cli-reference -->"
CONFIGS_MARKER = "<!-- configs-reference -->"
SUBCOMMANDS = re.compile(r"^usage: ichor [\w-]+ \[-h\] \{(?P<names>[\w,-]+)\}", re.MULTILINE)
HELP_WIDTH = "100"  # argparse wraps to $COLUMNS; fixed, so that the page is the same on every machine

log = logging.getLogger("mkdocs.hooks.reference")


def help_text(argv: list[str]) -> str:
    """What ``ichor <argv> --help`` prints, through the command's own entry point."""
    from ichor.cli import main

    out = io.StringIO()
    with (
        mock.patch.dict(os.environ, COLUMNS=HELP_WIDTH),
        contextlib.redirect_stdout(out),
        contextlib.suppress(SystemExit),
    ):
        main([*argv, "--help"])
    return out.getvalue().strip()


def cli_reference() -> str:
    from ichor.cli import COMMANDS, TRAINER_COMMANDS

    lines = ["| command | what it does |", "| --- | --- |"]
    lines += [f"| `ichor {name}` | {text} |" for name, text in TRAINER_COMMANDS.items()]
    lines += [f"| [`ichor {name}`](#ichor-{name}) | {text} |" for name, (_, text) in COMMANDS.items()]
    for name in COMMANDS:
        text = help_text([name])
        lines += ["", f"## ichor {name}", "", "```text", text, "```"]
        found = SUBCOMMANDS.search(text)
        for sub in found["names"].split(",") if found else []:
            lines += ["", f"### ichor {name} {sub}", "", "```text", help_text([name, sub]), "```"]
    return "\n".join(lines) + "\n"


def opening_comment(path: Path) -> str:
    """The comment lines a YAML file opens with, as they stand."""
    lines = []
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        lines.append(line)
    return "\n".join(lines)


def configs_reference(folder: Path) -> str:
    lines = []
    for path in sorted(folder.rglob("*.yaml")):
        name = path.relative_to(folder).as_posix()
        comment = opening_comment(path)
        if not comment:
            log.warning("lightning_configs/%s opens with no comment saying what it is for", name)
        lines += [f"## {name}", "", "```yaml", comment or "# (no description)", "```", ""]
    return "\n".join(lines)


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any, **kwargs: Any) -> str:
    if CLI_MARKER in markdown:
        markdown = markdown.replace(CLI_MARKER, cli_reference())
    if CONFIGS_MARKER in markdown:
        repo = Path(config["docs_dir"]).parent
        markdown = markdown.replace(CONFIGS_MARKER, configs_reference(repo / "lightning_configs"))
    return markdown
