"""Do the data loaders keep up with the training step?

    python benchmarks/loader_throughput.py            # the demo data and generated 320-px VOC-like JPEGs

For each data set: images/s that ``SemiSupervisedDataModule``'s training loaders deliver
(labeled + unlabeled images, weak and strong views included, after the workers' start) with
the configs' worker count, against images/s that the training step consumes with the batches
already in memory (MaskMatch under Lightning: the demo config's model on the demo data,
DeepLabV3+ ResNet-50 with the paper's three teacher scales on the JPEGs). Then, on the demo
data, a short real ``fit`` with the loaders in the loop: the time each step waits for its
batch (from the end of one step to the start of the next), which is what a slow loader costs.

The VOC-like set is generated once (deterministic) into ``--data`` (default: a temporary
folder): 500 x 375 JPEGs (quality 90, VOC's typical size) of coloured shapes on a textured
background, with greyscale-PNG masks of 21 classes (0-20, and 255 on the shapes' borders as
VOC has), as ``images/`` + ``masks/`` folders read through ``dataset: custom``.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import lightning as L
import numpy as np
import torch
from PIL import Image, ImageDraw
from reference_loop import quiet
from step_profile import MODELS, StepTimes, bare_trainer, lightning_step_time, make_batch

from maskmatch_pl import SemiSupervisedDataModule
from maskmatch_pl.compat import module_from_flat_knobs

DEMO_MODEL = {  # the demo network with configs/demo.yaml's method knobs
    **MODELS["demo (FPN EfficientNet-Lite0, 64 px)"][0],
    "pseudo_label_scales": [1.0],
    "masked_weight": 0.25,
    "conf_threshold": 0.7,
}


def write_voc_like(root: Path, counts: dict[str, int], seed: int = 0) -> Path:
    """``counts[split]`` image/mask pairs per split under ``root/<split>/{images,masks}``."""
    rng = np.random.default_rng(seed)
    for split, count in counts.items():
        (root / split / "images").mkdir(parents=True, exist_ok=True)
        (root / split / "masks").mkdir(parents=True, exist_ok=True)
        for index in range(count):
            name = f"{split}_{index:04d}"
            if (root / split / "masks" / f"{name}.png").exists():
                continue
            width, height = 500, 375
            texture = rng.normal(0, 25, (height // 5, width // 5, 3)).repeat(5, 0).repeat(5, 1)
            base = np.clip(rng.uniform(60, 190, 3) + texture, 0, 255).astype(np.uint8)
            image, mask = Image.fromarray(base), Image.new("L", (width, height), 0)
            draw_image, draw_mask = ImageDraw.Draw(image), ImageDraw.Draw(mask)
            for _ in range(int(rng.integers(1, 5))):
                cls = int(rng.integers(1, 21))
                x0, y0 = int(rng.integers(0, width - 60)), int(rng.integers(0, height - 60))
                box = [x0, y0, x0 + int(rng.integers(40, 220)), y0 + int(rng.integers(40, 200))]
                colour = tuple(int(c) for c in rng.integers(0, 256, 3))
                shape = draw_image.ellipse if cls % 2 else draw_image.rectangle
                shape(box, fill=colour)
                (draw_mask.ellipse if cls % 2 else draw_mask.rectangle)(box, fill=cls)
                draw_mask.rectangle(box, outline=255, width=2)  # VOC's ignore border
            image.save(root / split / "images" / f"{name}.jpg", quality=90)
            mask.save(root / split / "masks" / f"{name}.png")
    return root


def loader_images_per_second(data: SemiSupervisedDataModule, batches: int, warmup: int = 3) -> float:
    """Images/s (labeled + unlabeled) delivered by the two training loaders, after ``warmup`` batches."""
    data.setup("fit")
    loaders = list(data.train_dataloader().iterables.values())  # the labeled and the unlabeled loader
    iterators = [iter(loader) for loader in loaders]
    images, start = 0, None
    for index in range(warmup + batches):
        if index == warmup:
            images, start = 0, time.perf_counter()
        for position, loader in enumerate(loaders):
            batch = next(iterators[position], None)
            if batch is None:  # end of an epoch: the next one, as training goes on
                iterators[position] = iter(loader)
                batch = next(iterators[position])
            images += len(batch["image"])
    elapsed = time.perf_counter() - start
    for loader in loaders:  # persistent workers: stop them before the next measurement
        loader._iterator = None
    del iterators
    return images / elapsed


class DataWait(L.Callback):
    """Seconds between the end of one training step and the start of the next."""

    def __init__(self) -> None:
        self.waits: list[float] = []
        self._end: float | None = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if self._end is not None:
            self.waits.append(time.perf_counter() - self._end)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self._end = time.perf_counter()


def real_fit_wait(data: SemiSupervisedDataModule, steps: int) -> tuple[float, float]:
    """Median data wait and median step time (s) in a real ``fit`` of the demo MaskMatch model."""
    module = module_from_flat_knobs(num_classes=data.num_classes, encoder_weights=None, **DEMO_MODEL)
    wait, step = DataWait(), StepTimes()
    trainer = bare_trainer(steps, [wait, step], accelerator="cpu")
    trainer.fit(module, datamodule=data)
    return statistics.median(wait.waits[5:]), statistics.median(step.times[5:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", type=int, default=30, help="timed batches per loader")
    parser.add_argument("--repeats", type=int, default=3, help="timed training steps")
    parser.add_argument("--fit-steps", type=int, default=40, help="steps of the real demo fit (0: skip)")
    parser.add_argument("--data", default=None, help="where to generate the VOC-like JPEGs (default: a temp folder)")
    args = parser.parse_args()
    args.device, args.precision = "cpu", "32-true"
    quiet()
    torch.manual_seed(0)
    print(f"device cpu ({torch.get_num_threads()} CPU threads), torch {torch.__version__}\n")
    voc_root = write_voc_like(
        Path(args.data or tempfile.mkdtemp(prefix="voc_like_")), {"labeled": 32, "unlabeled": 128, "val": 4}
    )
    voc_data = lambda workers: SemiSupervisedDataModule(  # noqa: E731
        labeled=str(voc_root / "labeled"),
        unlabeled=str(voc_root / "unlabeled"),
        val=str(voc_root / "val"),
        num_classes=21,
        crop_size=320,
        batch_size=8,
        num_workers=workers,
    )
    demo_data = lambda workers: SemiSupervisedDataModule(  # noqa: E731
        dataset="demo", split="1_16", crop_size=64, scale_range=(0.75, 1.25), batch_size=8, num_workers=workers
    )
    r50_kwargs, r50_size, r50_batch = MODELS["DeepLabV3+ ResNet-50, 320 px"]
    cases = [  # name, data module, workers, model kwargs, crop, batch per loader
        ("demo (64 px canvases)", demo_data, 2, DEMO_MODEL, 64, 8),
        ("VOC-like JPEGs, 320-px crops", voc_data, 4, {**r50_kwargs}, r50_size, r50_batch),
    ]
    print(
        "| data | workers | loaders deliver (images/s) | model, batch | step consumes (images/s) "
        "| delivered / consumed |\n|---|---|---|---|---|---|"
    )
    for name, make_data, workers, kwargs, size, batch_size in cases:
        delivered = loader_images_per_second(make_data(workers), args.batches)
        module = module_from_flat_knobs(num_classes=11, encoder_weights=None, **kwargs)
        step = lightning_step_time(module, make_batch(size, batch_size, "cpu"), args, args.repeats)
        consumed = 2 * batch_size / step
        model = "demo MaskMatch" if kwargs is DEMO_MODEL else "DLV3+ R50 MaskMatch (3 scales)"
        print(
            f"| {name} | {workers} | {delivered:.0f} | {model}, {batch_size} + {batch_size} | {consumed:.1f} "
            f"| {delivered / consumed:.1f}x |",
            flush=True,
        )
    if args.fit_steps:
        wait, step = real_fit_wait(demo_data(2), args.fit_steps)
        print(
            f"\nreal demo fit, 2 workers, {args.fit_steps} steps: median wait for a batch {wait * 1000:.1f} ms, "
            f"median step {step * 1000:.1f} ms ({wait / (wait + step):.1%} of the loop waits for data)"
        )


if __name__ == "__main__":
    main()
