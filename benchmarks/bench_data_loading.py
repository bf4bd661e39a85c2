"""Data loading throughput: the memory-mapped cache against TorchIO harmonising on the fly.

Generates a synthetic multi-study dataset in a temporary folder, builds the cache (timed),
then reads scans through a DataLoader with the same number of workers three ways: cached
without augmentation, cached with the default augmentation (both after one untimed warm-up
pass), and tio.SubjectsDataset applying the same harmonisation transforms to the NIfTI
files each time (timed from the start; worker start-up is negligible next to it). Prints one table.

    .venv/bin/python benchmarks/bench_data_loading.py                 # 4 studies x 25 subjects, 2 mm grid
    .venv/bin/python benchmarks/bench_data_loading.py --subjects 5    # quick check
"""

from __future__ import annotations

import argparse
import tempfile
import time
from functools import partial
from pathlib import Path

import torch
import torchio as tio
from torch.utils.data import DataLoader

from ichor.data import Augmentation, CBFDataModule
from ichor.data.datamodule import CachedScans, collate_batch
from ichor.data.harmonise import harmonisation_transform
from ichor.synth import generate_dataset


def scans_per_second(loader: DataLoader, epochs: int, warm_up: bool) -> float:
    """Scans/s over ``epochs`` passes; ``warm_up`` runs one untimed pass first (worker start, page cache)."""
    if warm_up:
        for _ in loader:
            pass
    count, start = 0, time.perf_counter()
    for _ in range(epochs):
        for batch in loader:
            count += len(batch["path"])
    return count / (time.perf_counter() - start)


def scale_cbf(tensor: torch.Tensor, cbf_scale: float) -> torch.Tensor:
    return (tensor / cbf_scale).clamp(-1, 1)


def on_the_fly_loader(paths: list[str], dm: CBFDataModule, batch_size: int, workers: int) -> DataLoader:
    """TorchIO reading and harmonising each NIfTI every time, with the cache's transforms and scale normalisation."""
    subjects = [tio.Subject(cbf=tio.ScalarImage(path), path=path) for path in paths]
    scale = partial(scale_cbf, cbf_scale=dm.hparams.cbf_scale)  # picklable: results cross process boundaries
    transform = tio.Compose([harmonisation_transform(dm.settings), tio.Lambda(scale, include=["cbf"])])
    return DataLoader(tio.SubjectsDataset(subjects, transform=transform), batch_size=batch_size, num_workers=workers)


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
    args = parser.parse_args()
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

        def cached(augmentation):
            dataset = CachedScans(
                dm.rows.drop(columns="split"), predict.entries, "scale", dm.hparams.cbf_scale, augmentation
            )
            return DataLoader(
                dataset,
                batch_size=args.batch_size,
                shuffle=True,
                num_workers=args.workers,
                persistent_workers=True,
                collate_fn=collate_batch,
            )

        plain = scans_per_second(cached(None), args.epochs, warm_up=True)
        augmented = scans_per_second(cached(Augmentation()), args.epochs, warm_up=True)
        paths = list(dm.rows["path"][: args.on_the_fly_scans])
        fly = scans_per_second(on_the_fly_loader(paths, dm, args.batch_size, args.workers), 1, warm_up=False)

    print(
        f"\n{n} scans ({args.studies} studies x {args.subjects}), grid {tuple(args.shape)} at {args.spacing} mm, "
        f"{args.workers} workers, batch {args.batch_size}, {torch.get_num_threads()} torch thread(s) in the main process"
    )
    print(f"{'measure':<44}{'value':>12}")
    print(f"{'cache build (scans/s)':<44}{n / build_time:>12.1f}")
    print(f"{'cache size per scan (MB)':<44}{cache_bytes / n / 1e6:>12.2f}")
    print(f"{'cached, no augmentation (scans/s)':<44}{plain:>12.1f}")
    print(f"{'cached, default augmentation (scans/s)':<44}{augmented:>12.1f}")
    print(f"{'TorchIO on the fly (scans/s)':<44}{fly:>12.2f}")
    print(f"{'ratio cached / on the fly':<44}{plain / fly:>12.1f}x")
    print(f"{'ratio cached+augmentation / on the fly':<44}{augmented / fly:>12.1f}x")


if __name__ == "__main__":
    main()
