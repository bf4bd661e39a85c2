"""The front door and the docs site: a short README, and the pages the site writes at build time.

``make docs`` builds the site itself (``mkdocs build --strict``, in CI); these tests check the
hooks that write its generated pages, which need no mkdocs.
"""

import importlib.util
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
from helpers import CONFIGS, REPO

README_LINES = 250  # issue 21: the README is a front door; the rest lives in the docs site


def hook(name: str):
    spec = importlib.util.spec_from_file_location(f"docs_hook_{name}", REPO / "docs" / "hooks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_readme_is_a_front_door_of_at_most_250_lines():
    lines = (REPO / "README.md").read_text().splitlines()
    assert len(lines) <= README_LINES, f"README.md has {len(lines)} lines; move the rest into docs/"
    text = "\n".join(lines)
    assert "make demo" in text and "make test" in text and "from ichor import Encoder" in text


def benchmark_output(out: Path) -> Path:
    """What ``ichor benchmark`` writes into ``--out`` for a small, hand-made set of per-fold scores."""
    from ichor.benchmark import load_config
    from ichor.benchmark.report import Outcome, write_report

    cfg = load_config(CONFIGS / "benchmark_demo.yaml", {"seeds": [0], "trained_draws": 1, "probe": {}})
    scores = {("mae", "linear_probe"): [0.70, 0.60], ("scratch", "scratch"): [0.55, 0.50]}
    results = pd.DataFrame(
        [
            dict(task="AD", method=method, mode=mode, budget=10, fold=f"study-0{i}", seed=0, n_train=20)
            | {"test/auroc": score}
            for (method, mode), values in scores.items()
            for i, score in enumerate(values)
        ]
    )
    pretraining = pd.DataFrame([{"method": "mae", "compute": "equal_time", "probe/auroc end": 0.61}])
    write_report({"equal_time": Outcome(results, pd.DataFrame(), pd.DataFrame(), pretraining)}, cfg, out)
    return out


def test_results_hook_renders_the_tables_from_the_files_the_benchmark_wrote(tmp_path):
    results = hook("results")
    folder = benchmark_output(tmp_path / "docs" / "results" / "demo")
    (folder / "command.txt").write_text("# 2026-12-05\nichor benchmark --config C.yaml --out runs/demo\n")

    page = results.render(folder, tmp_path / "docs" / "results")
    assert "ichor benchmark --config C.yaml --out runs/demo" in page and "# 2026-12-05" in page
    assert "| mae | linear_probe | 0.650 ± 0.071 * |" in page  # benchmark_summary.csv, as the benchmark renders it
    assert "| scratch | scratch | 0.525 ± 0.035 * |" in page
    assert "| AD | 10 per class | mae (linear_probe) | scratch (scratch) | +0.125 [+0.100, +0.150] | 2 | wins |" in page
    assert "| mae | equal_time | 0.610 |" in page  # benchmark_pretraining.csv
    assert "![AD](demo/figures/AD.png)" in page  # the benchmark's figure, linked from the page's folder
    assert (
        "# ICHOR benchmark" not in page and "\n### AD (auroc, mean ± std over folds and seeds)" in page
    )  # below the page's own headings

    markdown = "## Demo\n\n<!-- results: demo -->\n"
    fake = SimpleNamespace(file=SimpleNamespace(src_path="results/index.md"))
    rendered = results.on_page_markdown(markdown, fake, {"docs_dir": str(tmp_path / "docs")}, None)
    assert rendered.startswith("## Demo\n") and "| mae | linear_probe | 0.650 ± 0.071 * |" in rendered


def test_results_hook_refuses_a_folder_without_its_command(tmp_path):
    results = hook("results")
    folder = benchmark_output(tmp_path / "demo")
    with pytest.raises(ValueError, match=r"no command\.txt"):
        results.render(folder, tmp_path)
    (folder / "command.txt").write_text("ichor benchmark ...\n")
    for table in folder.glob("*.csv"):
        table.unlink()
    with pytest.raises(ValueError, match="no CSV file there"):
        results.render(folder, tmp_path)


def test_results_hook_shows_a_benchmark_scripts_own_table(tmp_path):
    """benchmarks/recipe_grid.py writes results.csv: the page shows it as written, beside its command."""
    results = hook("results")
    folder = tmp_path / "grid"
    folder.mkdir()
    (folder / "command.txt").write_text("python benchmarks/recipe_grid.py --out runs/recipe_grid\n")
    pd.DataFrame({"recipe": ["shipped", "paper"], "auroc_final": [0.5123, 0.6]}).to_csv(
        folder / "results.csv", index=False
    )
    page = results.render(folder, tmp_path)
    assert "python benchmarks/recipe_grid.py" in page
    assert "| recipe | auroc_final |" in page and "| shipped | 0.512 |" in page and "| paper | 0.600 |" in page


def test_reference_hook_lists_every_command_and_every_shipped_config():
    from ichor.cli import COMMANDS

    reference = hook("reference")
    cli = reference.cli_reference()
    for name in COMMANDS:
        assert f"## ichor {name}\n" in cli and f"usage: ichor {name}" in cli
    assert "### ichor manifest check" in cli and "usage: ichor manifest check" in cli  # subcommands too
    configs = reference.configs_reference(CONFIGS)
    for path in CONFIGS.rglob("*.yaml"):
        name = path.relative_to(CONFIGS).as_posix()
        assert f"## {name}\n" in configs
        assert reference.opening_comment(path).splitlines()[0] in configs
