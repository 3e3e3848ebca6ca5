"""What the channels-last memory format (``channels_last: true``) buys: the training step and the
no-grad forward of each method in the default (contiguous) layout and channels-last, in one run.

    python benchmarks/memory_format.py                              # demo model, CPU
    python benchmarks/memory_format.py --device cuda --precision bf16-mixed --models "DeepLabV3+ ResNet-50, 320 px"

Each step is the whole step under Lightning's ``Trainer`` (batches in memory, median of the timed
steps; ``step_profile.lightning_step_time``); rounds alternate between the layouts, every module
starting from the same weights, so the ratio is taken on one machine state.
"""

from __future__ import annotations

import contextlib
import copy
import statistics
import time

import torch
from reference_loop import speed_parser, start, sync
from step_profile import MODELS, lightning_step_time, make_batch

from maskmatch_pl import MaskMatchModule
from maskmatch_pl.compat import module_from_flat_knobs

METHODS = {  # as the demo configs set them
    "supervised": dict(strong_weight=0.0, masked_weight=0.0, pseudo_label_scales=[1.0]),
    "FixMatch": dict(masked_weight=0.0, pseudo_label_scales=[1.0]),
    "MaskMatch (demo: masked view, 1 scale)": dict(masked_weight=0.25, pseudo_label_scales=[1.0]),
    "UniMatch": dict(masked_weight=0.0, pseudo_label_scales=[1.0], strong_views=2, fp_weight=0.5),
}
LAYOUTS = {"contiguous": False, "channels_last": True}


def forward_time(module: MaskMatchModule, images: torch.Tensor, device: str, precision: str, repeats: int) -> float:
    """Median seconds of one eval-mode, no-grad forward of ``images`` (what the teacher and val run)."""
    bf16 = precision == "bf16-mixed"
    autocast = torch.autocast(device_type=device, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    module.eval()
    times = []
    with torch.no_grad(), autocast:
        for _ in range(repeats + 2):
            sync(device)
            began = time.perf_counter()
            module(images)
            sync(device)
            times.append(time.perf_counter() - began)
    module.train()
    return statistics.median(times[2:])


def main() -> None:
    args = speed_parser(__doc__, rounds=2, models=[next(iter(MODELS))], methods=list(METHODS)).parse_args()
    start(args)
    for name in args.models:
        kwargs, size, batch_size = MODELS[name]
        batch = make_batch(size, batch_size, args.device)
        batch["unlabeled"]["strong2"] = batch["unlabeled"]["strong"].flip(-1)  # UniMatch's second strong view
        initial = module_from_flat_knobs(num_classes=11, encoder_weights=None, **kwargs).state_dict()
        times: dict[tuple[str, str], list[float]] = {}
        for _ in range(args.rounds):
            for method in args.methods:
                for layout, channels_last in LAYOUTS.items():
                    module = module_from_flat_knobs(
                        num_classes=11, encoder_weights=None, channels_last=channels_last, **kwargs, **METHODS[method]
                    ).to(args.device)
                    module.load_state_dict(copy.deepcopy(initial))
                    step = lightning_step_time(module, batch, args, args.repeats)
                    times.setdefault((method, layout), []).append(step)
                    if method == args.methods[0]:
                        images = batch["unlabeled"]["image"]
                        forward = forward_time(module, images, args.device, args.precision, args.repeats)
                        times.setdefault(("no-grad forward (teacher, val)", layout), []).append(forward)
        print(f"### {name}, batch {batch_size} labeled + {batch_size} unlabeled\n")
        print("| what | contiguous (ms) | channels_last (ms) | channels_last / contiguous |\n|---|---|---|---|")
        for what in dict.fromkeys(key[0] for key in times):
            default, fast = (statistics.median(times[(what, layout)]) for layout in LAYOUTS)
            print(f"| {what} | {default * 1000:.1f} | {fast * 1000:.1f} | {fast / default:.2f}x |", flush=True)
        print()


if __name__ == "__main__":
    main()
