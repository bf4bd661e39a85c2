"""Training-step throughput and peak memory: ICHOR's MAE (brain-aware on and off) vs MONAI's.

Each variant runs in its own subprocess (so peak RSS is its own), on the same batch of
synthetic brain-like volumes: an ellipsoid brain (grey-matter rim ~60, white matter ~20
mL/100g/min, noise, zero outside) sized like an adult brain on a 2 mm grid, i.e. about 18 %
of the voxels of a 96x112x96 box, scaled with the box for other sizes. A step is
forward + backward + AdamW. MONAI gets the same widths, depths, heads, MLP ratio, decoder,
input, patch and mask ratio, and the same norm-pix MSE on masked patches.

    .venv/bin/python benchmarks/bench_mae_step.py          # CPU: vit_small, 96x112x96, about a minute
    python benchmarks/bench_mae_step.py --device cuda --preset mae_vit_base \\
        --batch 16 --precision bf16                             # the GPU recipe
    .venv/bin/python benchmarks/bench_mae_step.py --against main --rounds 5   # this change vs main

``--against REV`` runs ICHOR's variants from the working tree and from REV in alternating
rounds (``benchmarks/against.py``), MONAI once per round, and prints each round's ratios:
working tree / REV, and ICHOR / MONAI for both trees.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import time
from pathlib import Path

import torch
from against import WORKING, ichor_source, in_turn, run_in, spread, trees

from ichor.models import PRESETS, brain_patches, build_mae, mae_flops, patchify

VARIANTS = ("ichor_brain_aware", "ichor_all_patches", "monai")
RECIPE = dict(preset="mae_vit_base", size=(96, 112, 96), patch=16, mask_ratio=0.75)
# Adult brain about 140 x 170 x 120 mm (LR x AP x SI) in a 96x112x96 box at 2 mm:
# semi-axes as fractions of the half box.
SEMI_AXES = (35.0 / 48.0, 42.5 / 56.0, 30.0 / 48.0)


def brain_like_batch(batch: int, size: tuple[int, int, int], seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(B,1,D,H,W) CBF-like volumes and brain masks; sizes vary +-5 % so batches are ragged."""
    gen = torch.Generator().manual_seed(seed)
    axes = torch.meshgrid(*(torch.arange(n, dtype=torch.float32) + 0.5 for n in size), indexing="ij")
    images, masks = [], []
    for _ in range(batch):
        scale = 1.0 + 0.1 * (torch.rand(1, generator=gen).item() - 0.5)
        r2 = sum(((a - n / 2) / (f * n / 2 * scale)) ** 2 for a, n, f in zip(axes, size, SEMI_AXES))
        brain = r2 < 1.0
        cbf = torch.where(r2 > 0.6, 60.0, 20.0) + 5.0 * torch.randn(size, generator=gen)
        images.append(torch.where(brain, cbf, 0.0) / 100.0)
        masks.append(brain)
    return torch.stack(images)[:, None], torch.stack(masks)[:, None]


def build(variant: str, args: argparse.Namespace) -> torch.nn.Module:
    if variant.startswith("ichor"):
        return build_mae(
            args.preset,
            img_size=tuple(args.size),
            patch_size=args.patch,
            mask_ratio=args.mask_ratio,
            brain_aware=variant == "ichor_brain_aware",
        )
    from monai.networks.nets import MaskedAutoEncoderViT

    preset = PRESETS[args.preset]
    width, depth, heads = preset.embed_dim, preset.depth, preset.num_heads
    dec_width, dec_depth, dec_heads = preset.decoder_embed_dim, preset.decoder_depth, preset.decoder_num_heads
    return MaskedAutoEncoderViT(
        in_channels=1,
        img_size=tuple(args.size),
        patch_size=args.patch,
        hidden_size=width,
        mlp_dim=4 * width,
        num_layers=depth,
        num_heads=heads,
        masking_ratio=args.mask_ratio,
        decoder_hidden_size=dec_width,
        decoder_mlp_dim=4 * dec_width,
        decoder_num_layers=dec_depth,
        decoder_num_heads=dec_heads,
        qkv_bias=True,
        # MONAI's 3D sin-cos table needs a width divisible by 6; otherwise a (same-cost) learned one.
        pos_embed_type="sincos" if width % 6 == 0 else "learnable",
        decoder_pos_embed_type="sincos" if dec_width % 6 == 0 else "learnable",
    )


def monai_loss(imgs: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor, patch: int) -> torch.Tensor:
    """The same norm-pix MSE on masked patches that ICHOR computes, for MONAI's (pred, mask).

    MONAI leaves the loss to the caller; its patch grid order is the same row-major one.
    """
    target = patchify(imgs, patch).float()
    target = (target - target.mean(-1, keepdim=True)) / (target.var(-1, keepdim=True) + 1e-6).sqrt()
    per_patch = (pred.float() - target).pow(2).mean(-1)
    return (per_patch * mask).sum() / mask.sum()


def worker(variant: str, args: argparse.Namespace) -> dict:
    """Time ``args.steps`` training steps after ``args.warmup``; report scans/s and peak memory."""
    torch.manual_seed(0)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    imgs, brain = brain_like_batch(args.batch, tuple(args.size))
    imgs, brain = imgs.to(device), brain.to(device)
    model = build(variant, args).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.05)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.precision == "bf16")
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    def step() -> None:
        with autocast:
            if variant == "monai":
                pred, mask = model(imgs)
                loss = monai_loss(imgs, pred, mask, args.patch)
            else:
                loss = model(imgs, brain_mask=brain)[0]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for _ in range(args.warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    times, cpu_times = [], []
    for _ in range(args.steps):
        start, cpu_start = time.perf_counter(), time.process_time()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
        cpu_times.append(time.process_time() - cpu_start)
    # Median step: robust to the odd step slowed by other processes on a shared machine.
    step_s = statistics.median(times)
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - rss_before
    return {
        "variant": variant,
        "scans_per_s": args.batch / step_s,
        "step_ms": 1000 * step_s,
        "cpu_ms": 1000 * statistics.median(cpu_times),  # CPU time of this process: less sensitive to load
        "peak_mb": peak,
        "source": ichor_source(),
    }


def run_worker(variant: str, argv: list[str], tree: Path) -> dict:
    return run_in(tree, [sys.executable, os.path.abspath(__file__), *argv, "--worker", variant])


def recipe_cost() -> dict:
    """Tokens and FLOPs per scan of the vit_base GPU recipe (96x112x96 at 2 mm, patch 16)."""
    size, patch = RECIPE["size"], RECIPE["patch"]
    _, brain = brain_like_batch(1, size)
    n_brain = int(brain_patches(brain, patch).sum())
    model = build_mae(RECIPE["preset"], img_size=size, patch_size=patch, mask_ratio=RECIPE["mask_ratio"])
    return {"brain_aware": mae_flops(model, n_brain), "all_patches": mae_flops(model)}


def report(args: argparse.Namespace, results: list[dict]) -> None:
    imgs, brain = brain_like_batch(args.batch, tuple(args.size))
    tokens = brain_patches(brain, args.patch).sum(1).float()
    grid = patchify(imgs[:1], args.patch).shape[1]
    device = torch.cuda.get_device_name() if args.device == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(
        f"{args.preset}, input {tuple(args.size)}, patch {args.patch}, mask ratio {args.mask_ratio}, "
        f"batch {args.batch}, median of {args.steps} steps, best of {args.rounds} rounds, {args.precision}, {device}"
    )
    print(
        f"brain: {brain.float().mean():.1%} of voxels; {tokens.mean():.0f} of {grid} patches "
        f"({tokens.mean() / grid:.0%}) hold brain"
    )
    memory = "peak GPU MB" if args.device == "cuda" else "peak RSS MB over start"
    monai = next(r for r in results if r["variant"] == "monai")
    print(f"\n{'variant':<20}{'scans/s':>10}{'step ms':>10}{memory:>24}{'ICHOR/MONAI speed':>20}{'mem':>8}")
    for r in results:
        print(
            f"{r['variant']:<20}{r['scans_per_s']:>10.2f}{r['step_ms']:>10.0f}{r['peak_mb']:>24.0f}"
            f"{r['scans_per_s'] / monai['scans_per_s']:>19.2f}x{r['peak_mb'] / monai['peak_mb']:>7.2f}x"
        )
    cost = recipe_cost()
    print(
        f"\nGPU recipe {RECIPE['preset']} at {RECIPE['size']} (2 mm), patch {RECIPE['patch']}, "
        f"mask {RECIPE['mask_ratio']}, per scan:"
    )
    for name, c in cost.items():
        print(
            f"  {name:<12} grid {c['grid_tokens']} tokens, encoder {c['encoder_tokens']}, "
            f"decoder {c['decoder_tokens']}; forward {c['forward_flops'] / 1e9:.1f} GFLOP, "
            f"train step {c['train_step_flops'] / 1e9:.1f} GFLOP"
        )


def compare(args: argparse.Namespace, argv: list[str], sources: dict[str, Path]) -> None:
    """``--against``: ICHOR from both trees in alternating order and MONAI, every round; per-round ratios."""
    labels = list(sources)
    runs: dict[tuple[str, str], list[dict]] = {}
    for index in range(args.rounds):
        for variant in VARIANTS[:2]:
            for label in in_turn(labels, index):
                runs.setdefault((variant, label), []).append(run_worker(variant, argv, sources[label]))
        runs.setdefault(("monai", WORKING), []).append(run_worker("monai", argv, sources[WORKING]))
    working, base = labels
    print(
        f"{args.preset}, input {tuple(args.size)}, patch {args.patch}, mask ratio {args.mask_ratio}, batch "
        f"{args.batch}, median of {args.steps} steps per run, {args.rounds} alternating rounds, {args.precision}, "
        f"{args.threads or torch.get_num_threads()} thread(s); load average {os.getloadavg()[0]:.1f} at the end"
    )
    print(f"working tree against {base}; scans/s are medians over the rounds, ratios median [range] over them\n")
    header = f"{'variant':<20}{'working':>10}{base:>10}{'working/' + base:>24}{'same, CPU time':>24}"
    print(header + f"{'working/MONAI':>24}{base + '/MONAI':>24}")
    monai = runs[("monai", WORKING)]
    for variant in VARIANTS[:2]:
        ours, theirs = runs[(variant, working)], runs[(variant, base)]
        print(
            f"{variant:<20}{statistics.median(r['scans_per_s'] for r in ours):>10.2f}"
            f"{statistics.median(r['scans_per_s'] for r in theirs):>10.2f}"
            f"{spread([a['scans_per_s'] / b['scans_per_s'] for a, b in zip(ours, theirs)]):>24}"
            f"{spread([b['cpu_ms'] / a['cpu_ms'] for a, b in zip(ours, theirs)]):>24}"
            f"{spread([a['scans_per_s'] / m['scans_per_s'] for a, m in zip(ours, monai)]):>24}"
            f"{spread([b['scans_per_s'] / m['scans_per_s'] for b, m in zip(theirs, monai)]):>24}"
        )
    print(f"{'monai':<20}{statistics.median(r['scans_per_s'] for r in monai):>10.2f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="mae_vit_small", choices=sorted(PRESETS))
    parser.add_argument("--size", type=int, nargs=3, default=[96, 112, 96], metavar=("D", "H", "W"))
    parser.add_argument("--patch", type=int, default=16)
    parser.add_argument("--mask-ratio", type=float, default=0.75)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--steps", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2, help="interleaved repeats; the best is kept")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--precision", default="32", choices=["32", "bf16"], help="bf16 = autocast")
    parser.add_argument("--threads", type=int, default=0, help="torch threads per run (0: torch's default)")
    parser.add_argument("--against", metavar="REV", help="also run ICHOR from this commit, in alternating rounds")
    parser.add_argument("--worker", choices=VARIANTS, help=argparse.SUPPRESS)
    argv = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args.worker, args)))
        return 0
    with trees(args.against) as sources:
        if args.against:
            compare(args, argv, sources)
            return 0
        # Interleaved rounds, best round per variant: a shared machine slows whole runs at random.
        rounds = [[run_worker(variant, argv, sources[WORKING]) for variant in VARIANTS] for _ in range(args.rounds)]
    results = [max(runs, key=lambda r: r["scans_per_s"]) for runs in zip(*rounds)]
    report(args, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
