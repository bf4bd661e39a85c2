"""``--against REV`` for the benchmarks: the working tree and another commit, measured in the same run.

REV's tree is exported (``git archive``) into a temporary folder. Each measurement runs in a
subprocess whose PYTHONPATH puts one tree first (the worker reports which ``ichor`` it
imported, and a mismatch stops the run); the trees alternate within each round and swap
their order every round (A B, B A, A B, ...), so that load that drifts on a shared machine
slows both alike. Ratios (working tree / REV) are taken within a round, then summarised by
their median and range over the rounds: that ratio is the robust figure, the absolute rates
move with the machine's load.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
WORKING = "working tree"
TREE_ENV = "ICHOR_BENCH_TREE"  # set in a worker: the tree it runs, first on its PYTHONPATH

# The parent process imports the tree this script belongs to, whichever ichor the environment installed.
if TREE_ENV not in os.environ:
    sys.path[:0] = [str(REPO), str(REPO / "heads")]


@contextmanager
def trees(rev: str | None) -> Iterator[dict[str, Path]]:
    """``{label: source root}``: the working tree, then REV's tree (short hash as label) if given."""
    if rev is None:
        yield {WORKING: REPO}
        return
    commit = git("rev-parse", "--short", f"{rev}^{{commit}}").decode().strip()
    with tempfile.TemporaryDirectory(prefix=f"ichor-{commit}-") as folder:
        subprocess.run(["tar", "-x", "-C", folder], input=git("archive", "--format=tar", commit), check=True)
        yield {WORKING: REPO, commit: Path(folder)}


def git(*args: str) -> bytes:
    done = subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, check=False)
    if done.returncode:
        sys.exit(f"git {' '.join(args)}: {done.stderr.decode().strip()}")
    return done.stdout


def run_in(tree: Path, command: Sequence[str]) -> dict:
    """Run a worker with ``tree`` first on PYTHONPATH; its last line of output is a JSON object with ``source``."""
    env = {**os.environ, TREE_ENV: str(tree), "PYTHONPATH": os.pathsep.join([str(tree), str(tree / "heads")])}
    done = subprocess.run(list(command), capture_output=True, text=True, env=env, check=False)
    if done.returncode:
        raise RuntimeError(f"{' '.join(command)} in {tree} failed:\n{done.stderr[-3000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    if Path(result["source"]) != tree.resolve():
        raise RuntimeError(f"the worker imported ichor from {result['source']}, not from {tree}")
    return result


def ichor_source() -> str:
    """The source root of the ``ichor`` this process imported (what a worker reports as ``source``)."""
    import ichor

    return str(Path(ichor.__file__).resolve().parents[1])


def in_turn(labels: Sequence[str], round_index: int) -> list[str]:
    """The order of the trees in a round: as given in even rounds, reversed in odd ones."""
    return list(labels) if round_index % 2 == 0 else list(reversed(labels))


def spread(ratios: Sequence[float]) -> str:
    """Median and range of per-round ratios, e.g. ``1.21x [1.15-1.30]``."""
    return f"{statistics.median(ratios):.2f}x [{min(ratios):.2f}-{max(ratios):.2f}]"
