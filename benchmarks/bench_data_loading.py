"""Data loading throughput of the training path: before and after issue 14, against TorchIO harmonising on the fly.

Generates a synthetic multi-study dataset in a temporary folder, builds the cache (timed),
then reads training batches with the default augmentation, each after one untimed warm-up pass:
- before: the workers normalise and augment, and hand over float32 (``transforms_on: workers``);
- now: the workers hand over the cached float16 values (``transforms_on: device``), which a
  GPU then finishes in microseconds; without a GPU here, also timed with the finishing done on
  this CPU in the main process, an upper bound of its cost;
- now, in memory: the split resident in host memory (``in_memory: host``), indexed in the main process;
- the peer: tio.SubjectsDataset applying the same harmonisation transforms to the NIfTI files
  each time (timed from the start; worker start-up is negligible next to it).
Same workers and batch size for every loader. Prints one table.

    .venv/bin/python benchmarks/bench_data_loading.py                 # 4 studies x 25 subjects, 2 mm grid
    .venv/bin/python benchmarks/bench_data_loading.py --spacing 4 --shape 48 56 48   # the demo's grid
    .venv/bin/python benchmarks/bench_data_loading.py --subjects 5    # quick check
    .venv/bin/python benchmarks/bench_data_loading.py --against main --rounds 5   # this change vs main

``--against REV`` measures one path, the default one of a run trained on this CPU (a default
``CBFDataModule`` asked by a ``Trainer(accelerator="cpu")``, each batch finished by
``on_after_batch_transfer`` as the trainer would), from the working tree and from REV in
alternating rounds on the same generated data (``benchmarks/against.py``), and prints the
ratio working tree / REV per round.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import torch
import torchio as tio
from against import ichor_source, in_turn, run_in, spread, trees
from torch.utils.data import DataLoader

from ichor.data import Augmentation, CBFDataModule
from ichor.data.harmonise import harmonisation_transform
from ichor.synth import generate_dataset


def scans_per_second(loader: DataLoader, epochs: int, warm_up: bool, finish=lambda batch: batch) -> float:
    """Scans/s over ``epochs`` passes, each batch through ``finish``; ``warm_up`` runs one untimed pass first."""
    if warm_up:
        for _ in loader:
            pass
    count, start = 0, time.perf_counter()
    for _ in range(epochs):
        for batch in loader:
            count += len(finish(batch)["path"])
    return count / (time.perf_counter() - start)


def scale_cbf(tensor: torch.Tensor, cbf_scale: float) -> torch.Tensor:
    return (tensor / cbf_scale).clamp(-1, 1)


def on_the_fly_loader(paths: list[str], dm: CBFDataModule, batch_size: int, workers: int) -> DataLoader:
    """TorchIO reading and harmonising each NIfTI every time, with the cache's transforms and scale normalisation."""
    subjects = [tio.Subject(cbf=tio.ScalarImage(path), path=path) for path in paths]
    scale = partial(scale_cbf, cbf_scale=dm.hparams.cbf_scale)  # picklable: results cross process boundaries
    transform = tio.Compose([harmonisation_transform(dm.settings), tio.Lambda(scale, include=["cbf"])])
    return DataLoader(tio.SubjectsDataset(subjects, transform=transform), batch_size=batch_size, num_workers=workers)


def default_cpu_path(args: argparse.Namespace) -> dict:
    """Worker of ``--against``: scans/s of a default datamodule's training batches as a CPU trainer receives them."""
    import lightning as L

    torch.set_num_threads(1)
    dm = CBFDataModule(
        [str(Path(args.data) / "manifests")],
        cache_dir=args.cache,
        spacing=args.spacing,
        shape=tuple(args.shape),
        num_workers=args.workers,
        batch_size=args.batch_size,
        progress=False,
        log_dir=args.cache,
    )
    dm.trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)
    dm.prepare_data()
    dm.setup("fit")

    def finish(batch):  # what the trainer does after transfer (a no-op for batches finished in the workers)
        return dm.on_after_batch_transfer(batch, 0)

    rate = scans_per_second(dm.train_dataloader(), args.epochs, warm_up=True, finish=finish)
    return {"scans_per_s": rate, "scans": len(dm.datasets["train"]), "source": ichor_source()}


def compare(args: argparse.Namespace, argv: list[str]) -> None:
    """``--against``: the default CPU path from both trees, alternating, on one generated dataset."""
    with tempfile.TemporaryDirectory() as tmp, trees(args.against) as sources:
        root = Path(tmp)
        generate_dataset(
            root / "data",
            args.studies,
            args.subjects,
            seed=0,
            workers=args.workers,
            progress=False,
            manifest_dir=root / "manifests",
        )
        runs: dict[str, list[dict]] = {label: [] for label in sources}
        for index in range(args.rounds):
            for label in in_turn(list(sources), index):
                cache = str(root / f"cache-{list(sources).index(label)}")
                command = [
                    sys.executable,
                    os.path.abspath(__file__),
                    *argv,
                    "--worker",
                    "--data",
                    tmp,
                    "--cache",
                    cache,
                ]
                runs[label].append(run_in(sources[label], command))
    working, base = list(sources)
    n = runs[working][0]["scans"]
    print(
        f"\ndefault training path of a CPU run: {n} training scans of {args.studies * args.subjects}, grid "
        f"{tuple(args.shape)} at {args.spacing} mm, {args.workers} workers, batch {args.batch_size}, "
        f"{args.epochs} epochs per run after one untimed, {args.rounds} alternating rounds; "
        f"load average {os.getloadavg()[0]:.1f} at the end"
    )
    ours, theirs = (statistics.median(r["scans_per_s"] for r in runs[label]) for label in (working, base))
    ratios = [a["scans_per_s"] / b["scans_per_s"] for a, b in zip(runs[working], runs[base])]
    print(f"\n{'working scans/s':>16}{base + ' scans/s':>16}{'working/' + base:>24}")
    print(f"{ours:>16.1f}{theirs:>16.1f}{spread(ratios):>24}")
    print(
        "per round (working, "
        + base
        + "): "
        + ", ".join(f"{a['scans_per_s']:.1f}/{b['scans_per_s']:.1f}" for a, b in zip(runs[working], runs[base]))
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--studies", type=int, default=4)
    parser.add_argument("--subjects", type=int, default=25, help="per study")
    parser.add_argument("--spacing", type=float, default=2.0)
    parser.add_argument("--shape", type=int, nargs=3, default=(96, 112, 96))
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=3, help="passes over the cache per measurement")
    parser.add_argument("--on-the-fly-scans", type=int, default=32, help="scans read by the (slow) on-the-fly loader")
    parser.add_argument("--against", metavar="REV", help="compare the default CPU path with this commit's")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds of --against")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    parser.add_argument("--cache", help=argparse.SUPPRESS)
    argv = sys.argv[1:]
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(default_cpu_path(args)))
        return
    if args.against:
        compare(args, argv)
        return
    table(args)


def table(args: argparse.Namespace) -> None:
    """The paths side by side in this process: before, now (finished on a GPU or this CPU), in memory, TorchIO."""
    from ichor.data.datamodule import CachedScans, collate_batch
    from ichor.data.in_memory import load_resident

    torch.set_num_threads(1)

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        manifests = generate_dataset(
            root / "data", args.studies, args.subjects, seed=0, workers=args.workers, progress=False
        )
        dm = CBFDataModule(
            [str(m) for m in manifests],
            cache_dir=str(root / "cache"),
            spacing=args.spacing,
            shape=tuple(args.shape),
            num_workers=args.workers,
            batch_size=args.batch_size,
            progress=False,
            log_dir=str(root / "logs"),
        )
        start = time.perf_counter()
        dm.prepare_data()
        build_time = time.perf_counter() - start
        dm.setup("fit")
        predict = dm.datasets["predict"]
        n = len(predict)
        cache_bytes = sum(f.stat().st_size for f in dm.cache.folder.iterdir())

        def cached(augmentation=None, raw=False, resident=None):
            dataset = CachedScans(
                dm.rows.drop(columns="split"),
                predict.entries,
                "scale",
                dm.hparams.cbf_scale,
                augmentation,
                raw,
                resident,
            )
            workers = 0 if resident is not None else args.workers
            return DataLoader(
                dataset,
                batch_size=args.batch_size,
                shuffle=True,
                num_workers=workers,
                persistent_workers=workers > 0,
                collate_fn=collate_batch,
            )

        def finish(batch):  # what CBFDataModule.on_after_batch_transfer does on the device, here on this CPU
            return dm.on_after_batch_transfer(batch, 0)

        before = scans_per_second(cached(Augmentation()), args.epochs, warm_up=True)
        handover = cached(raw=True)
        now = scans_per_second(handover, args.epochs, warm_up=True)
        now_cpu = scans_per_second(handover, args.epochs, warm_up=False, finish=finish)
        resident = cached(raw=True, resident=load_resident(predict.entries, torch.device("cpu")))
        memory = scans_per_second(resident, args.epochs, warm_up=True)
        memory_cpu = scans_per_second(resident, args.epochs, warm_up=False, finish=finish)
        paths = list(dm.rows["path"][: args.on_the_fly_scans])
        fly = scans_per_second(on_the_fly_loader(paths, dm, args.batch_size, args.workers), 1, warm_up=False)

    print(
        f"\n{n} scans ({args.studies} studies x {args.subjects}), grid {tuple(args.shape)} at {args.spacing} mm, "
        f"{args.workers} workers, batch {args.batch_size}, {torch.get_num_threads()} torch thread(s) in the main process"
    )
    print(f"cache build {n / build_time:.1f} scans/s, {cache_bytes / n / 1e6:.2f} MB per scan; default augmentation")
    print(f"\n{'training path':<58}{'scans/s':>10}{'vs before':>11}{'vs TorchIO':>12}")
    rows = [
        ("before: workers augment, hand over float32", before),
        ("now: workers hand over float16 (finish on the GPU)", now),
        ("now, finishing on this CPU instead of a GPU", now_cpu),
        ("now, in memory (host), finish on the GPU", memory),
        ("now, in memory (host), finishing on this CPU", memory_cpu),
        ("TorchIO on the fly, no augmentation", fly),
    ]
    for label, rate in rows:
        print(f"{label:<58}{rate:>10.1f}{rate / before:>10.2f}x{rate / fly:>11.1f}x")


if __name__ == "__main__":
    main()
