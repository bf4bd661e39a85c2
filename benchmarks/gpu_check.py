"""One command for a GPU: ViT-Base MAE training steps in bf16, scans/s and MFU, over the switches that matter.

Runs ``mae_vit_base`` on 96x112x96 (2 mm) brain-like batches (benchmarks/bench_mae_step.py's),
patch 16, mask 0.75, AdamW, bf16 autocast: brain-aware tokens on and off, ``torch.compile``
on and off, at a few batch sizes; then the cost of finishing a float16 batch on the GPU
(normalisation and the default augmentation, and with affine resampling on every scan), the
work ``CBFDataModule`` moves from the loader workers to the device. MFU is the analytic FLOP
count (``ichor.models.mae_flops``) against the device's bf16 peak (``ICHOR_PEAK_TFLOPS`` or
Lightning's table of known GPUs). Prints one table; about 5 minutes on one H100-class GPU.

    python benchmarks/gpu_check.py                       # batch sizes 64 128 256
    python benchmarks/gpu_check.py --batches 32 --steps 5   # quick check
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from bench_mae_step import RECIPE, brain_like_batch

from ichor.data import Augmentation
from ichor.data.datamodule import prepare_
from ichor.models import build_mae, mae_flops
from ichor.training.throughput import peak_flops


def timed(step, steps: int, warmup: int) -> float:
    """Median seconds of ``step`` after ``warmup`` untimed calls, the GPU synchronised around each."""
    for _ in range(warmup):
        step()
    torch.cuda.synchronize()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def training_step(batch: int, brain_aware: bool, compiled: bool, args: argparse.Namespace) -> dict:
    """Scans/s and FLOPs per scan of one configuration."""
    device = torch.device("cuda")
    torch.manual_seed(0)
    images, masks = brain_like_batch(batch, RECIPE["size"])
    images, masks = images.to(device), masks.to(device)
    model = build_mae(
        RECIPE["preset"],
        img_size=RECIPE["size"],
        patch_size=RECIPE["patch"],
        mask_ratio=RECIPE["mask_ratio"],
        brain_aware=brain_aware,
    ).to(device)
    counts = model.brain_patches(images, masks).sum(1).tolist()
    flops = sum(mae_flops(model, n)["train_step_flops"] for n in counts) / batch
    forward = torch.compile(model) if compiled else model
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.05, fused=True)

    def step() -> None:
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = forward(images, brain_mask=masks)[0]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    seconds = timed(step, args.steps, args.warmup + (2 if compiled else 0))
    return {"scans_per_s": batch / seconds, "flops_per_scan": flops}


def finishing(batch: int, augmentation: Augmentation, args: argparse.Namespace) -> float:
    """Milliseconds per scan to turn a float16 batch into model input on the GPU (what the workers no longer do)."""
    images, masks = brain_like_batch(batch, RECIPE["size"])
    raw = torch.where(masks, images * 100, torch.nan).half().cuda()
    mean, std = torch.full((batch,), 40.0, device="cuda"), torch.full((batch,), 15.0, device="cuda")
    generator = torch.Generator(device="cuda").manual_seed(0)

    def step() -> None:
        x = raw.float()
        prepare_(x, torch.empty_like(x, dtype=torch.bool), "scale", 100.0, mean, std, augmentation, generator)

    return 1000 * timed(step, args.steps, args.warmup) / batch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", type=int, nargs="+", default=[64, 128, 256])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("gpu_check.py needs a CUDA GPU")
    torch.backends.cuda.matmul.allow_tf32 = True
    peak = peak_flops(torch.device("cuda"), "bf16-mixed")
    name = torch.cuda.get_device_name()
    print(f"{name}; bf16 peak {'unknown' if peak is None else f'{peak / 1e12:.0f} TFLOP/s'}; torch {torch.__version__}")
    print(f"{RECIPE['preset']}, {RECIPE['size']} at 2 mm, patch {RECIPE['patch']}, mask {RECIPE['mask_ratio']}")
    print(f"\n{'tokens':<14}{'compile':<9}{'batch':>6}{'scans/s':>10}{'GFLOP/scan':>12}{'TFLOP/s':>9}{'MFU':>7}")
    for brain_aware in (True, False):
        for compiled in (False, True):
            for batch in args.batches:
                try:
                    result = training_step(batch, brain_aware, compiled, args)
                except torch.cuda.OutOfMemoryError:
                    print(
                        f"{'brain-aware' if brain_aware else 'all patches':<14}{compiled!s:<9}{batch:>6}  out of memory"
                    )
                    torch.cuda.empty_cache()
                    continue
                achieved = result["scans_per_s"] * result["flops_per_scan"]
                mfu = "-" if peak is None else f"{achieved / peak:.1%}"
                print(
                    f"{'brain-aware' if brain_aware else 'all patches':<14}{compiled!s:<9}{batch:>6}"
                    f"{result['scans_per_s']:>10.0f}{result['flops_per_scan'] / 1e9:>12.1f}"
                    f"{achieved / 1e12:>9.1f}{mfu:>7}"
                )
                torch.cuda.empty_cache()
    batch = max(args.batches)
    print(f"\nfinishing a float16 batch of {batch} on the GPU (normalise + augment), ms per scan:")
    for label, augmentation in (
        ("default augmentation", Augmentation()),
        ("+ affine on every scan", Augmentation(affine_p=1.0)),
    ):
        print(f"  {label:<24}{finishing(batch, augmentation, args):>8.3f}")


if __name__ == "__main__":
    main()
