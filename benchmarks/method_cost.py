"""What MaskMatch costs over FixMatch: step time against the forward-equivalent floor.

    python benchmarks/method_cost.py                              # demo model and DLV3+ R50 @ 320, CPU
    python benchmarks/method_cost.py --device cuda --precision bf16-mixed

Forward-equivalents per image, counting a training forward + backward as 3 and a no-grad pass
at input scale s as s^2: FixMatch = teacher 1 + labeled 3 + strong 3 = 7; MaskMatch with the
paper's three teacher scales = 0.75^2 + 1 + 1.25^2 = 3.125 + labeled 3 + strong 3 + masked 3 =
12.125, a floor of 1.73x FixMatch; with one teacher scale (the demo config) 10, a floor of
1.43x. Every row is the whole step under Lightning's ``Trainer`` (batches in memory, median
of the timed steps), rounds alternating between the rows. The teacher's passes are also timed
alone (no grad), to show whether the three scales cost their 3.125 forwards or more.
``batched`` runs the labeled, strong and masked views in one forward with per-view BatchNorm
statistics (the sequential step's result); ``concat`` shares the statistics between them.
"""

from __future__ import annotations

import statistics
import time

import torch
from reference_loop import compiled, speed_parser, start, sync
from step_profile import MODELS, alternating_step_times, make_batch

from maskmatch_pl import MaskMatchModule
from maskmatch_pl.compat import module_from_flat_knobs

PAPER_SCALES = (0.75, 1.0, 1.25)
METHODS = {  # name: (module keyword arguments, forward-equivalents per image)
    "FixMatch": (dict(masked_weight=0.0, pseudo_label_scales=[1.0]), 7.0),
    "FixMatch, batched student forward": (
        dict(masked_weight=0.0, pseudo_label_scales=[1.0], student_forward="batched"),
        7.0,
    ),
    "MaskMatch, 3 teacher scales (paper)": (dict(masked_weight=0.5, pseudo_label_scales=list(PAPER_SCALES)), 12.125),
    "MaskMatch, 1 teacher scale (demo)": (dict(masked_weight=0.5, pseudo_label_scales=[1.0]), 10.0),
    "MaskMatch, 3 scales, batched student forward": (
        dict(masked_weight=0.5, pseudo_label_scales=list(PAPER_SCALES), student_forward="batched"),
        12.125,
    ),
    "MaskMatch, 1 scale, batched student forward": (
        dict(masked_weight=0.5, pseudo_label_scales=[1.0], student_forward="batched"),
        10.0,
    ),
    "MaskMatch, 3 scales, concat student forward": (
        dict(masked_weight=0.5, pseudo_label_scales=list(PAPER_SCALES), student_forward="concat", norm_stats="all"),
        12.125,
    ),
}


def teacher_time(module: MaskMatchModule, images: torch.Tensor, scales, device: str, repeats: int) -> float:
    """Median seconds of the teacher's no-grad eval-mode passes over ``scales``."""
    times = []
    for _ in range(repeats + 1):
        sync(device)
        start = time.perf_counter()
        module.teacher.scale_probabilities(images, scales)
        sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times[1:])


def main() -> None:
    args = speed_parser(__doc__, rounds=2, models=list(MODELS), methods=list(METHODS)).parse_args()
    start(args)
    for name in args.models:
        kwargs, size, batch_size = MODELS[name]
        batch = make_batch(size, batch_size, args.device)
        modules = {
            method: compiled(
                module_from_flat_knobs(num_classes=11, encoder_weights=None, **kwargs, **extra).to(args.device), args
            )
            for method, (extra, _) in METHODS.items()
            if method in args.methods or method.startswith("FixMatch")
        }
        times = alternating_step_times(modules, batch, args)  # FixMatch first: all start from its weights
        print(f"### {name}, batch {batch_size} labeled + {batch_size} unlabeled\n")
        print("| method | step (ms) | / FixMatch with the same student forward | floor |\n|---|---|---|---|")
        for method, measured in times.items():
            against = "FixMatch, batched student forward" if "batched" in method else "FixMatch"
            step, fixmatch = statistics.median(measured), statistics.median(times[against])
            floor = METHODS[method][1] / METHODS[against][1]
            print(f"| {method} | {step * 1000:.1f} | {step / fixmatch:.2f}x | {floor:.2f}x |")
        module = modules["FixMatch"]
        one = teacher_time(module, batch["unlabeled"]["image"], [1.0], args.device, args.repeats)
        three = teacher_time(module, batch["unlabeled"]["image"], PAPER_SCALES, args.device, args.repeats)
        expected = sum(s * s for s in PAPER_SCALES)
        print(
            f"\nteacher alone (no grad): 1 scale {one * 1000:.1f} ms, 3 scales {three * 1000:.1f} ms = "
            f"{three / one:.2f}x one scale (floor {expected:.3f}x)\n",
            flush=True,
        )


if __name__ == "__main__":
    main()
