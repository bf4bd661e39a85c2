"""What can the online probe's cohort show? Its protocol on references beside an encoder, in one run.

The online probe (``ichor.evaluation.online_probe``) asks whether pre-training beat its own random start
on a small labelled cohort. When the encoder reads chance at both ends, either the encoder learned nothing
the label needs or the cohort cannot show it. This script scores, with the probe's own protocol
(subject-grouped cross-validation, ``--draws`` label draws, the global CBF scalars kept apart):

- ``global CBF alone``: the two scalars (log brain-mean CBF, its spread), no encoder;
- ``floor``: the benchmark's regional mean CBF (``ichor.benchmark.baseline``) with the scalars;
- ``oracle``: the ground truth ``ichor synth`` records (maps it made only), the ceiling;
- the encoder of a benchmark pre-training folder (its ``pretrain_args.json`` and ``checkpoints/last.ckpt``)
  at initialisation (rebuilt from the run's seed) and at the end, under each ``--readout``, with the paired gain.

    python benchmarks/probe_power.py --run runs/benchmark_demo/pretrain-equal-time/mae \\
        --manifests data_manifests/probe --csv runs/probe_power_probe.csv

Read with the label's chance (AUROC 0.5): a cohort whose floor and scalars read chance while the oracle
does not has the signal, but only in a form neither the floor nor the encoder extracts.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pandas as pd
import torch

from ichor.benchmark.baseline import oracle_features, regional_features
from ichor.benchmark.pretraining import PRETRAIN_RECORD
from ichor.data.datamodule import GLOBAL_CBF_NAMES
from ichor.evaluation.features import embed_loader
from ichor.evaluation.online_probe import OnlineProbe, paired_gain, probe_scores
from ichor.io import write_csv
from ichor.training.runs import Run, build_run

READOUTS = ("brain_mean:2", "region:2")  # pooling:blocks, the benchmark's two probe candidates


def score(features: np.ndarray, cohort: pd.DataFrame, scalars: np.ndarray | None, draws: int) -> list[dict]:
    """The online probe's label scores of ``features``, one dict per label draw."""
    labels, subjects = cohort["diagnosis"].astype(str).to_numpy(), cohort["subject"].astype(str).to_numpy()
    studies = cohort["study"].astype(str).to_numpy()
    return [
        probe_scores(features, labels, True, subjects, studies, seed=seed, scalars=scalars) for seed in range(draws)
    ]


def row(name: str, draws: list[dict], start: list[dict] | None = None) -> dict:
    auroc = [d["auroc"] for d in draws]
    out = {"features": name, "auroc": np.mean(auroc), "auroc_sd": np.std(auroc, ddof=1), "rankme": draws[0]["rankme"]}
    if start is not None:
        out["gain"], out["gain_sd"] = paired_gain(start, draws, "auroc")
    return out


def encoder_ends(run: Path, scratch: Path) -> tuple[Any, Any, dict[str, dict[str, torch.Tensor]]]:
    """The pre-trainer and datamodule of a benchmark pre-training folder, and the weights at both ends: at
    initialisation (rebuilt from the recorded run's seed: what its online probe read first) and at the end."""
    recorded = json.loads((run / PRETRAIN_RECORD).read_text())["run"]
    recorded_run = Run(*(tuple(recorded.get(part, ())) for part in ("configs", "overrides", "command_line")))
    cli = build_run(recorded_run, scratch)
    model, data = cli.model, cli.datamodule
    model.backbone.img_size = tuple(data.harmonisation_settings()["shape"])
    model.trainer = cli.trainer
    model.setup("fit")
    initial = {name: value.clone() for name, value in model.state_dict().items()}
    final = torch.load(run / "checkpoints/last.ckpt", map_location="cpu", weights_only=True)["state_dict"]
    return model, data, {"initial": initial, "final": final}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, required=True, help="a benchmark pre-training folder")
    parser.add_argument("--manifests", default="data_manifests/probe", help="the labelled cohort")
    parser.add_argument("--draws", type=int, default=5)
    parser.add_argument("--readout", nargs="+", default=list(READOUTS), help="pooling:blocks")
    parser.add_argument("--csv", type=Path)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        model, data, weights = encoder_ends(args.run, Path(tmp))
        probe = OnlineProbe(target="diagnosis", manifests=[args.manifests])
        loader, rows = probe.probe_set(SimpleNamespace(datamodule=data))
        tables = {}
        for readout in args.readout:
            pooling, blocks = readout.split(":")
            for end, state in weights.items():
                model.load_state_dict(state)
                table = embed_loader(model.encoder_network(), loader, pooling, int(blocks), device="cpu")
                tables[readout, end] = table.merge(rows[["path", "diagnosis"]], on="path", validate="one_to_one")
    cohort = next(iter(tables.values()))
    scalars = cohort[list(GLOBAL_CBF_NAMES)].to_numpy()
    by_path = rows.drop_duplicates("path").set_index("path").loc[cohort["path"]].reset_index()
    floor = regional_features(by_path).loc[cohort["path"]].to_numpy()
    oracle = oracle_features(by_path).loc[cohort["path"]].to_numpy()
    results = [
        row("global CBF alone", score(scalars, cohort, None, args.draws)),
        row("floor: regional mean CBF + global CBF", score(floor, cohort, scalars, args.draws)),
        row("oracle (ceiling)", score(oracle, cohort, None, args.draws)),
    ]
    for readout in args.readout:
        features = {end: tables[readout, end].filter(regex=r"^f\d+$").to_numpy() for end in weights}
        start = score(features["initial"], cohort, scalars, args.draws)
        results.append(row(f"encoder at initialisation ({readout}) + global CBF", start))
        results.append(
            row(
                f"encoder at the end ({readout}) + global CBF",
                score(features["final"], cohort, scalars, args.draws),
                start,
            )
        )
    table = pd.DataFrame(results)
    print(f"{args.manifests}: {len(cohort)} scans, {cohort['study'].nunique()} studies, {args.draws} label draws")
    print(table.to_string(index=False, float_format=lambda value: f"{value:.3f}"))
    if args.csv:
        write_csv(table, args.csv)


if __name__ == "__main__":
    main()
