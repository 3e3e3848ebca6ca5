"""What the masked view costs on a ViT: pixel against token masking, DINOv2-S under a DPT head.

    python benchmarks/vit_cost.py                         # 224 px, batch 2 + 2, CPU (random weights)
    python benchmarks/vit_cost.py --device cuda --size 518 --precision bf16-mixed

Rows: FixMatch (one teacher scale), MaskMatch with the paper's three teacher scales and the masked
view in pixels (hidden 28 px patches painted grey, a full encoder forward) or in tokens (the hidden
2 x 2-token patches dropped from the encoder). Floors in forward-equivalents per image (a training
forward + backward = 3, a no-grad pass at scale s = s^2; method_cost.py): FixMatch 7, MaskMatch in
pixels 12.125 (1.73x), in tokens 3.125 + 3 + 3 + 3 x 0.3 = 10.025 (1.43x: the masked view's encoder sees
30 % of the tokens; its decoder still runs on the full grid, so the true floor sits a little above).
Each row is the whole step under Lightning's ``Trainer`` (median of the timed steps, rounds
alternating between rows); peak memory is the resident high-water mark (CPU, ``VmHWM``) or
``torch.cuda.max_memory_allocated`` of a fresh process running that row's steps.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
from pathlib import Path

from reference_loop import compiled, speed_parser, start
from step_profile import alternating_step_times, make_batch

from maskmatch_pl.compat import module_from_flat_knobs

VIT = "DINOv2-S DPT"
PAPER_SCALES = [0.75, 1.0, 1.25]
ROWS = {  # name: (module keyword arguments, forward-equivalents per image)
    "FixMatch": (dict(masked_weight=0.0, pseudo_label_scales=[1.0]), 7.0),
    "MaskMatch, masked view in pixels": (dict(masked_weight=0.5, pseudo_label_scales=PAPER_SCALES), 12.125),
    "MaskMatch, masked view in tokens": (
        dict(masked_weight=0.5, pseudo_label_scales=PAPER_SCALES, mask_space="token"),
        3.125 + 3 + 3 + 3 * 0.3,
    ),
}


def module_kwargs(size: int) -> dict:
    """DINOv2-S (random weights: nothing downloads) under V2's small DPT head, 28 px mask patches."""
    return dict(
        num_classes=21,
        arch="DPT",
        encoder_name="tu-vit_small_patch14_dinov2",
        encoder_weights=None,
        model_kwargs={
            "img_size": size,
            "encoder_output_indices": [2, 5, 8, 11],
            "decoder_intermediate_channels": [48, 96, 192, 384],
            "decoder_fusion_channels": 64,
        },
        mask_patch_size=28,
        mask_ratio=0.7,
        norm_stats="all",
        optimizer="adamw",
        lr=5e-6,
        lr_multi=40.0,
    )


def peak_memory_mib(row: str, size: int, batch_size: int, device: str, steps: int = 3) -> float:
    """Peak memory (MiB) of a fresh process that runs ``steps`` training steps of ``row``."""
    code = (
        "import json, sys, torch; import vit_cost as v; import step_profile as s\n"
        f"m = v.module_from_flat_knobs(**v.module_kwargs({size}), **v.ROWS[{row!r}][0]).to({device!r}); "
        "m.log = lambda *a, **k: None\n"
        f"batch = s.make_batch({size}, {batch_size}, {device!r})\n"
        f"for _ in range({steps}): m.training_step(batch, 1).backward()\n"
        f"print(torch.cuda.max_memory_allocated() / 2**20 if {device!r} == 'cuda' else s.own_peak_mib())"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).parent, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(out.stderr)
    return float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = speed_parser(__doc__, rounds=2, models=[])  # one model here: --models is not read
    parser.add_argument("--size", type=int, default=224, help="square crop in pixels")
    parser.add_argument("--batch-size", type=int, default=2, help="labeled and unlabeled images per step")
    parser.add_argument("--json", type=Path, help="also write the table's numbers here")
    args = parser.parse_args()
    start(args)
    batch = make_batch(args.size, args.batch_size, args.device)
    batch["labeled"]["mask"] = batch["labeled"]["mask"] % 21
    modules = {
        row: compiled(module_from_flat_knobs(**module_kwargs(args.size), **extra).to(args.device), args)
        for row, (extra, _) in ROWS.items()
    }
    times = alternating_step_times(modules, batch, args)
    fixmatch = statistics.median(times["FixMatch"])
    print(f"### {VIT}, {args.size} px, batch {args.batch_size} labeled + {args.batch_size} unlabeled\n")
    print("| method | step (ms) | unlabeled images/s | / FixMatch | floor | peak memory (MiB) |")
    print("|---|---|---|---|---|---|")
    results = {}
    for row, measured in times.items():
        step = statistics.median(measured)
        memory = peak_memory_mib(row, args.size, args.batch_size, args.device)
        floor = ROWS[row][1] / ROWS["FixMatch"][1]
        results[row] = {"step_s": step, "ratio": step / fixmatch, "floor": floor, "peak_mib": memory}
        print(
            f"| {row} | {step * 1000:.0f} | {args.batch_size / step:.2f} | {step / fixmatch:.2f}x | {floor:.2f}x "
            f"| {memory:.0f} |",
            flush=True,
        )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
