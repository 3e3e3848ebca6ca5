"""Time and peak memory of one MaskMatch training step and of each of its parts.

    python benchmarks/step_profile.py                          # demo model and DLV3+ R50 @ 320, CPU
    python benchmarks/step_profile.py --device cuda --precision bf16-mixed --channels-last --compile

Parts: teacher multi-scale pass (no grad), CutMix + patch masks, student forward on the
labeled + strong views, student forward on the masked view, backward, optimiser step. The
"sum of parts" is compared with (a) ``training_step`` + backward + step called directly and
(b) the same step run by Lightning's ``Trainer`` (batches already in memory), whose extra
time is the framework overhead. Peak memory is measured on CUDA (``max_memory_allocated``)
for ``student_forward=concat`` and ``sequential``; on CPU as the peak resident memory of a
fresh process running the step in each mode.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import statistics
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from maskmatch_pl import MaskMatchModule, PseudoLabels, consistency_loss, cutmix, forward_views
from maskmatch_pl.compat import module_from_flat_knobs

MODELS = {
    "demo (FPN EfficientNet-Lite0, 64 px)": (
        dict(
            arch="FPN",
            encoder_name="tu-tf_efficientnet_lite0",
            model_kwargs={"decoder_pyramid_channels": 64, "decoder_segmentation_channels": 32},
            mask_patch_size=8,
        ),
        64,
        8,
    ),
    "DeepLabV3+ ResNet-50, 320 px": (dict(arch="DeepLabV3Plus", encoder_name="resnet50"), 320, 2),
}


class Repeat(Dataset):
    def __init__(self, batch: dict, length: int) -> None:
        self.batch, self.length = batch, length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict:
        return self.batch


def make_batch(size: int, batch: int, device: str) -> dict:
    g = torch.Generator().manual_seed(0)
    labeled = {
        "image": torch.randn(batch, 3, size, size, generator=g),
        "mask": torch.randint(0, 11, (batch, size, size), generator=g),
    }
    unlabeled = {
        "image": torch.randn(batch, 3, size, size, generator=g),
        "strong": torch.randn(batch, 3, size, size, generator=g),
        "ignore_mask": torch.zeros(batch, size, size, dtype=torch.long),
    }
    move = lambda d: {k: v.to(device) for k, v in d.items()}  # noqa: E731
    return {"labeled": move(labeled), "unlabeled": move(unlabeled)}


class Timer:
    def __init__(self, device: str) -> None:
        self.device, self.totals = device, {}

    @contextlib.contextmanager
    def __call__(self, name: str):
        if self.device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        yield
        if self.device == "cuda":
            torch.cuda.synchronize()
        self.totals[name] = self.totals.get(name, 0.0) + time.perf_counter() - start


def build(kwargs: dict, args, mode: str = "sequential") -> MaskMatchModule:
    """The profiled module on ``args.device`` with ``student_forward=mode`` (``concat`` needs
    ``norm_stats='all'``), channels-last and compiled when asked."""
    norm_stats = "all" if mode == "concat" else "labeled"
    module = module_from_flat_knobs(
        num_classes=11,
        encoder_weights=None,
        student_forward=mode,
        norm_stats=norm_stats,
        channels_last=args.channels_last,
        **kwargs,
    )
    module = module.to(args.device)
    if args.compile:
        module.network.net = torch.compile(module.network.net)
    return module


def twin(module: MaskMatchModule, kwargs: dict, args, mode: str) -> MaskMatchModule:
    """:func:`build` with the weights of ``module``."""
    other = build(kwargs, args, mode)
    other.load_state_dict(module.state_dict())
    return other


def profile(module: MaskMatchModule, kwargs: dict, batch: dict, args, repeats: int) -> tuple[dict, dict, dict]:
    device = args.device
    autocast = (
        torch.autocast(device_type=device, dtype=torch.bfloat16)
        if args.precision == "bf16-mixed"
        else contextlib.nullcontext()
    )
    timer = Timer(device)
    weights, threshold = module.method.weights, module.method.threshold.tau
    labeled, unlabeled = batch["labeled"], batch["unlabeled"]
    optimizer = torch.optim.SGD(module.parameters(), lr=1e-3, momentum=0.9)
    for iteration in range(repeats + 2):
        if iteration == 2:
            timer.totals.clear()
        with autocast:
            with timer("teacher multi-scale pass"):
                targets = PseudoLabels.from_probabilities(
                    module.teacher.probabilities(unlabeled["image"]), unlabeled["ignore_mask"]
                )
            with timer("CutMix + patch masks"):
                rng = torch.Generator().manual_seed(iteration)
                strong, targets = cutmix(unlabeled["strong"], targets, module.method.cutmix_prob, rng)
                masked = module.method.masking(strong, rng)
            with timer("student labeled + strong pass"):
                logits_l, logits_s = forward_views(
                    module.network, [labeled["image"], strong], update_stats=[True, False]
                )
                loss = weights.sup * module.method.sup_loss(
                    logits_l, labeled["mask"]
                ) + weights.strong * consistency_loss(logits_s, targets, threshold)
            with timer("student masked pass"):
                (logits_m,) = forward_views(module.network, [masked], update_stats=[False])
                loss = loss + weights.masked * consistency_loss(logits_m, targets, threshold)
        with timer("backward"):
            loss.backward()
        with timer("optimiser step"):
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
    parts = {k: v / repeats for k, v in timer.totals.items()}
    whole, memory = {}, {}
    for mode in ("sequential", "concat"):  # sequential runs the same passes as the parts above
        step_module = twin(module, kwargs, args, mode)
        step_module.log = lambda *a, **k: None
        optimizer = torch.optim.SGD(step_module.parameters(), lr=1e-3, momentum=0.9)
        timer.totals.clear()
        for iteration in range(repeats + 2):
            if iteration == 2:
                timer.totals.clear()
            with timer("direct"):
                with autocast:
                    loss = step_module.training_step(batch, 1)
                loss.backward()
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
            with autocast:
                loss = step_module.training_step(batch, 1)
            loss.backward()
            optimizer.zero_grad(set_to_none=True)
            memory[mode] = torch.cuda.max_memory_allocated() / 2**20
        whole[mode] = (timer.totals["direct"] / repeats, lightning_step_time(step_module, batch, args, repeats))
    return parts, whole, memory


class StepTimes(L.Callback):
    def __init__(self) -> None:
        self.times: list[float] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.strategy.root_device.type == "cuda":
            torch.cuda.synchronize()
        self._start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.strategy.root_device.type == "cuda":
            torch.cuda.synchronize()
        self.times.append(time.perf_counter() - self._start)


def bare_trainer(steps: int, callbacks: list[L.Callback], **kwargs) -> L.Trainer:
    """A ``Trainer`` for ``steps`` training steps on one device with nothing else: no logger,
    checkpoints, progress bar or validation."""
    return L.Trainer(
        max_steps=steps,
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        callbacks=callbacks,
        **kwargs,
    )


def lightning_step_time(module: MaskMatchModule, batch: dict, args, repeats: int) -> float:
    """Median seconds per training step of ``module`` under Lightning's ``Trainer`` (batches
    already in memory, two warm-up steps not counted)."""
    cpu_batch = {k: {n: t[0].cpu() for n, t in v.items()} for k, v in batch.items()}
    size = len(batch["labeled"]["image"])
    loaders = {k: DataLoader(Repeat(v, size * (repeats + 2)), batch_size=size) for k, v in cpu_batch.items()}
    times = StepTimes()
    trainer = bare_trainer(
        repeats + 2, [times], accelerator=args.device if args.device != "cpu" else "cpu", precision=args.precision
    )
    trainer.fit(module, train_dataloaders=loaders)
    return statistics.median(times.times[2:])


def alternating_step_times(modules: dict[str, MaskMatchModule], batch: dict, args) -> dict[str, list[float]]:
    """Seconds per step of each module (:func:`lightning_step_time`), ``args.rounds`` rounds alternating
    between them, every module starting each round from the first one's initial weights."""
    initial = copy.deepcopy(next(iter(modules.values())).state_dict())
    times: dict[str, list[float]] = {name: [] for name in modules}
    for _ in range(args.rounds):
        for name, module in modules.items():
            module.load_state_dict(initial)
            times[name].append(lightning_step_time(module, batch, args, args.repeats))
    return times


def own_peak_mib() -> float:
    """Peak resident memory (MiB) of this process's own address space: ``VmHWM`` from
    ``/proc/self/status``. Not ``getrusage().ru_maxrss``: on Linux that keeps the high-water
    mark of the process that spawned this one (it survives ``exec``), so a child of a large
    parent reports the parent's peak."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status (Linux only)")


def peak_rss_mib(name: str, mode: str, steps: int = 3) -> float:
    """Peak resident memory (MiB) of a fresh process that runs ``steps`` training steps of
    model ``name`` with ``student_forward=mode`` on the CPU (model and interpreter included)."""
    code = (
        "import sys, torch; sys.argv = ['x']; import step_profile as s; "
        f"kw, size, b = s.MODELS[{name!r}]; "
        "m = s.module_from_flat_knobs(num_classes=11, encoder_weights=None, "
        f"student_forward={mode!r}, norm_stats={'all' if mode == 'concat' else 'labeled'!r}, **kw); "
        "m.log = lambda *a, **k: None; batch = s.make_batch(size, b, 'cpu')\n"
        f"for _ in range({steps}): m.training_step(batch, 1).backward()\n"
        "print(s.own_peak_mib())"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).parent, capture_output=True, text=True)
    return float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--precision", default="32-true", choices=["32-true", "bf16-mixed"])
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--compile", action="store_true", help="torch.compile the network")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    args = parser.parse_args()
    torch.manual_seed(0)
    print(
        f"device {args.device} ({torch.cuda.get_device_name() if args.device == 'cuda' else torch.get_num_threads()} "
        f"{'GPU' if args.device == 'cuda' else 'CPU threads'}), precision {args.precision}, channels_last "
        f"{args.channels_last}, compile {args.compile}, torch {torch.__version__}\n"
    )
    for name in args.models:
        kwargs, size, batch_size = MODELS[name]
        module = build(kwargs, args)
        batch = make_batch(size, batch_size, args.device)
        parts, whole, memory = profile(module, kwargs, batch, args, args.repeats)
        total = sum(parts.values())
        print(f"### {name}, batch {batch_size} labeled + {batch_size} unlabeled\n")
        print("| part | ms | share of the sum |\n|---|---|---|")
        for part, seconds in parts.items():
            print(f"| {part} | {seconds * 1000:.1f} | {seconds / total:.0%} |")
        print(f"| **sum of parts** | {total * 1000:.1f} | 100% |")
        for mode, (direct, lightning) in whole.items():
            print(
                f"| whole step ({mode}), training_step + backward + step called directly | {direct * 1000:.1f} "
                f"| {direct / total:.0%} |"
            )
            print(
                f"| whole step ({mode}) under Lightning's Trainer | {lightning * 1000:.1f} | {lightning / total:.0%} |"
            )
        direct, lightning = whole["sequential"]
        own = (direct - total) / direct
        print(
            f"\nwhole step (sequential, as the parts) vs sum of parts: {own:+.1%}; "
            f"Lightning's Trainer vs the direct call: {(lightning - direct) / direct:+.1%}"
        )
        if memory:
            print("peak CUDA memory allocated during the step: ", end="")
        else:
            memory = {mode: peak_rss_mib(name, mode) for mode in ("concat", "sequential")}
            print("peak resident memory of a process running the step (CPU, model and interpreter included): ", end="")
        print(f"concat {memory['concat']:.0f} MiB, sequential {memory['sequential']:.0f} MiB\n")


if __name__ == "__main__":
    main()
