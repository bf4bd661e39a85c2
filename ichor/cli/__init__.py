"""The ``ichor`` command.

Trainer subcommands (``fit``, ``validate``, ``test``, ``predict``) come from a
``LightningCLI`` subclass (``ichor.training.runs.IchorCLI``), so every model and
datamodule argument is a YAML key.
The other subcommands (``synth``, ``manifest``, ...) are small argparse programs
registered in ``COMMANDS``; ``ichor --help`` lists both kinds together.

Either kind fails in one line naming the file or setting and what is wrong (a bad config, a
missing, corrupt or unsafe file, a read-only output folder, a full disk, a GPU this machine
lacks), exit status 1; ``--traceback`` or ``ICHOR_TRACEBACK=1`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

import ichor

TRAINER_COMMANDS = {
    "fit": "train a model (pre-training or a task head)",
    "validate": "run one validation pass",
    "test": "run one test pass",
    "predict": "write predictions",
}

# name -> (module with `add_arguments(parser)` and `run(args) -> int`, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "synth": ("ichor.cli.synth", "generate a realistic multi-study synthetic CBF dataset"),
    "manifest": ("ichor.cli.manifest", "check manifests, or build one from ASLPrep/ExploreASL derivatives"),
    "preprocess": ("ichor.cli.preprocess", "build the harmonised cache of a config's data ahead of training"),
    "export-encoder": ("ichor.cli.export_encoder", "write a checkpoint's encoder weights and metadata"),
    "import-encoder": ("ichor.cli.import_encoder", "import a MONAI ViT / MAE encoder as an ICHOR encoder"),
    "heads": ("ichor.cli.heads", "list the installed task heads, their package and arguments"),
    "cv": ("ichor.cli.cv", "k-fold cross-validation of a task config, grouped by subject"),
    "embed": ("ichor.cli.embed", "write pooled encoder features, one row per scan"),
    "explain": ("ichor.cli.explain", "attribution maps of a trained task per scan and group (NIfTI + PNG)"),
    "qei": ("ichor.cli.qei", "the automated CBF quality evaluation index (QEI) per scan"),
    "benchmark": ("ichor.cli.benchmark", "compare pre-training methods over tasks, label budgets and folds"),
}


# A failing command prints one line; its traceback only with this flag or variable.
TRACEBACK_FLAG, TRACEBACK_ENV = "--traceback", "ICHOR_TRACEBACK"


def _usage() -> str:
    lines = [
        "usage: ichor <command> [options]   (ichor <command> --help for its options)",
        "       ichor --version",
        "",
        "training (Lightning CLI):",
    ]
    lines += [f"  {name:<10} {text}" for name, text in TRAINER_COMMANDS.items()]
    lines += ["", "tools:"]
    lines += [f"  {name:<10} {text}" for name, (_, text) in COMMANDS.items()]
    return "\n".join(lines)


def run_command(name: str, argv: Sequence[str]) -> int:
    """Parse ``argv`` for the tool ``name`` and run it; returns its exit status (1, in one line, on an error)."""
    traceback, argv = _traceback_wanted(argv)
    module_name, text = COMMANDS[name]
    module = importlib.import_module(module_name)
    parser = argparse.ArgumentParser(
        prog=f"ichor {name}",
        description=(module.__doc__ or text).strip(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=f"{TRACEBACK_FLAG}: on an error, show the traceback (or set {TRACEBACK_ENV}=1)",
    )
    module.add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        if isinstance(device := getattr(args, "device", None), str):
            check_device(device)
        return int(module.run(args) or 0)
    except (ValueError, OSError) as error:  # bad inputs, corrupt or unsafe files, unwritable outputs, a full disk
        if traceback:
            raise
        return _failed(name, error)


def check_device(device: str) -> None:
    """Refuse, in one line, a ``--device`` torch does not know or this machine lacks (no GPU)."""
    import torch

    try:
        kind = torch.device(device).type
    except RuntimeError as error:
        raise ValueError(f"--device {device}: not a device ({error})") from error
    if kind == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {device}: no GPU is available on this machine; run on the CPU with --device cpu")
    if kind == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"--device {device}: MPS is not available on this machine; run on the CPU with --device cpu")


def _traceback_wanted(argv: Sequence[str]) -> tuple[bool, list[str]]:
    """Whether the user asked for tracebacks (flag or variable), and ``argv`` without the flag."""
    return TRACEBACK_FLAG in argv or bool(os.environ.get(TRACEBACK_ENV)), [a for a in argv if a != TRACEBACK_FLAG]


def _failed(command: str, error: BaseException) -> int:
    """Print the one line of a failed ``ichor <command>`` (and how to see the traceback); exit status 1."""
    print(f"ichor {command}: {error}\n(the traceback: add {TRACEBACK_FLAG}, or set {TRACEBACK_ENV}=1)", file=sys.stderr)
    return 1


def version() -> str:
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as installed

    parts = []
    for package in ("torch", "lightning"):
        try:
            parts.append(f"{package} {installed(package)}")
        except PackageNotFoundError:
            continue
    return f"ichor {ichor.__version__}" + (f" ({', '.join(parts)})" if parts else "")


def run_trainer(argv: list[str], from_shell: bool) -> int:
    """A Lightning CLI command; an error in the config or the data is one line naming it (exit 1)."""
    from lightning.fabric.utilities.exceptions import MisconfigurationException

    from ichor.training.runs import IchorCLI, missing_fragments  # imported here: tool commands start without Lightning

    traceback, argv = _traceback_wanted(argv)
    configs = [value for flag, value in zip(argv, argv[1:]) if flag == "--config"]
    configs += [arg.removeprefix("--config=") for arg in argv if arg.startswith("--config=")]
    for fragment in missing_fragments(configs):
        print(
            f"ichor {argv[0]}: the config's header composes it after {fragment}: add --config {fragment} first",
            file=sys.stderr,
        )
    if from_shell:  # LightningCLI reads sys.argv itself (and warns when also given args)
        sys.argv[1:] = argv
    try:
        IchorCLI(args=None if from_shell else argv)
    # ManifestError, ScanError, WeightsError, bad settings, missing or unwritable files, Lightning's own refusals
    except (ValueError, OSError, MisconfigurationException) as error:
        if traceback:
            raise
        return _failed(argv[0], error)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    from_shell = argv is None
    argv = list(sys.argv[1:] if from_shell else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0 if argv else 2
    if argv[0] in ("-V", "--version"):
        print(version())
        return 0
    if argv[0] in COMMANDS:
        return run_command(argv[0], argv[1:])
    if argv[0] in TRAINER_COMMANDS or argv[0].startswith("-"):
        return run_trainer(argv, from_shell)
    print(f"ichor: unknown command {argv[0]!r}\n\n{_usage()}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
