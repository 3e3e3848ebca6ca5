"""Our FixMatch step under Lightning against a plain-PyTorch FixMatch loop (no Lightning).

    python benchmarks/reference_loop.py                           # demo model and DLV3+ R50 @ 320, CPU
    python benchmarks/reference_loop.py --device cuda --precision bf16-mixed

The plain loop is written from UniMatch's ``fixmatch.py`` (read, not copied): the same network
and weights, the same batch, SGD with the encoder at ``lr`` and the rest at ``lr x 10`` and
the poly LR set by hand every iteration, the reference's loss. It runs in two forms:

- **same passes as ours**: exactly the forwards our step runs (``teacher_pass=joint``: the
  labeled and weak batches in one train-mode forward, as the reference; ``teacher_pass=eval``,
  the default: a no-grad eval-mode forward of the weak view, then the labeled batch), with the
  CutMix partner taken from the batch as ours does. ``ours / plain`` is then the cost of
  Lightning and of our code, nothing else.
- **fixmatch.py as written**: the joint pass plus the reference's extra no-grad forward of a
  second unlabeled batch (its CutMix partners come from a second pass over the loader).

Steps are timed from the batch in memory to the end of the optimiser step (LR update
included), after two warm-up steps; rounds alternate plain and Lightning so that drift of this
shared machine hits both, and the table gives medians.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import logging
import statistics
import time
import warnings

import torch
import torch.nn.functional as F
from step_profile import MODELS, lightning_step_time, make_batch

from maskmatch_pl import MaskMatchModule, cutmix_boxes
from maskmatch_pl.compat import module_from_flat_knobs

LR, LR_MULTI, TAU = 1e-3, 10.0, 0.95


def reference_optimizer(net: torch.nn.Module) -> torch.optim.Optimizer:
    """fixmatch.py's optimiser: SGD, the backbone at LR, everything else at LR x lr_multi."""
    backbone = [p for n, p in net.named_parameters() if n.startswith("encoder.")]
    head = [p for n, p in net.named_parameters() if not n.startswith("encoder.")]
    return torch.optim.SGD(
        [{"params": backbone, "lr": LR}, {"params": head, "lr": LR * LR_MULTI}], lr=LR, momentum=0.9, weight_decay=1e-4
    )


def plain_fixmatch_step(
    net: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    batch: dict,
    box: torch.Tensor,
    iteration: int,
    total_iterations: int,
    teacher_pass: str = "joint",
    second_batch: dict | None = None,
    autocast: contextlib.AbstractContextManager | None = None,
) -> torch.Tensor:
    """One FixMatch iteration in plain PyTorch; returns the loss (detached).

    ``box`` (``B x H x W`` bool) is the CutMix box of each unlabeled image; its partner is the
    next image of the batch, or the same position of ``second_batch`` when given (fixmatch.py's
    second loader, which costs one more no-grad forward).
    """
    autocast = autocast or contextlib.nullcontext()
    img_x, mask_x = batch["labeled"]["image"], batch["labeled"]["mask"]
    img_u_w, img_u_s = batch["unlabeled"]["image"], batch["unlabeled"]["strong"]
    ignore = batch["unlabeled"]["ignore_mask"]
    partner = torch.roll(torch.arange(len(img_u_w), device=img_u_w.device), -1)
    with autocast:
        if teacher_pass == "joint":
            net.train()
            pred_x, pred_u_w = net(torch.cat((img_x, img_u_w))).split([len(img_x), len(img_u_w)])
            pred_u_w = pred_u_w.detach()
        else:
            with torch.no_grad():
                net.eval()
                pred_u_w = net(img_u_w)
            net.train()
            pred_x = net(img_x)
        conf_u_w, mask_u_w = pred_u_w.float().softmax(dim=1).max(dim=1)
        if second_batch is not None:
            with torch.no_grad():
                net.eval()
                conf_mix, mask_mix = net(second_batch["unlabeled"]["image"]).float().softmax(dim=1).max(dim=1)
            net.train()
            strong_mix, ignore_mix = second_batch["unlabeled"]["strong"], second_batch["unlabeled"]["ignore_mask"]
        else:
            conf_mix, mask_mix, strong_mix, ignore_mix = (
                conf_u_w[partner],
                mask_u_w[partner],
                img_u_s[partner],
                ignore[partner],
            )
        img_u_s = torch.where(box.unsqueeze(1), strong_mix, img_u_s)
        pred_u_s = net(img_u_s)
        mask_cut = torch.where(box, mask_mix, mask_u_w)
        conf_cut = torch.where(box, conf_mix, conf_u_w)
        ignore_cut = torch.where(box, ignore_mix, ignore)
        loss_x = F.cross_entropy(pred_x.float(), mask_x, ignore_index=255)
        loss_u_s = F.cross_entropy(pred_u_s.float(), mask_cut, reduction="none")
        loss_u_s = (loss_u_s * ((conf_cut >= TAU) & (ignore_cut != 255))).sum() / (ignore_cut != 255).sum()
        loss = (loss_x + loss_u_s) / 2.0
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    lr = LR * (1 - iteration / total_iterations) ** 0.9
    optimizer.param_groups[0]["lr"] = lr
    optimizer.param_groups[1]["lr"] = lr * LR_MULTI
    return loss.detach()


def plain_step_time(net, batch, args, repeats: int, teacher_pass: str, as_written: bool) -> float:
    """Median seconds per iteration of :func:`plain_fixmatch_step` after two warm-up iterations."""
    optimizer = reference_optimizer(net)
    size = batch["unlabeled"]["image"].shape[-1]
    generator = torch.Generator().manual_seed(0)
    second = {"unlabeled": {k: v.flip(0) for k, v in batch["unlabeled"].items()}} if as_written else None
    autocast = torch.autocast(device_type=args.device, dtype=torch.bfloat16) if args.precision == "bf16-mixed" else None
    times = []
    for iteration in range(repeats + 2):
        box = cutmix_boxes(len(batch["unlabeled"]["image"]), size, size, 0.5, generator=generator, device=args.device)
        sync(args.device)
        start = time.perf_counter()
        loss = plain_fixmatch_step(net, optimizer, batch, box, iteration, 1000, teacher_pass, second, autocast)
        loss.item()  # the reference logs every loss with .item()
        sync(args.device)
        times.append(time.perf_counter() - start)
    return statistics.median(times[2:])


def quiet() -> None:
    """Keep Lightning's banners and warnings out of the printed table."""
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")


def speed_parser(
    description: str, rounds: int, models: list[str], methods: list[str] | None = None
) -> argparse.ArgumentParser:
    """The options every timing script shares: where it runs, in which precision, how many timed steps
    and rounds, and which of ``step_profile.MODELS`` (by default ``models``); with ``methods``, also
    ``--methods``, a choice among them (all by default)."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--precision", default="32-true", choices=["32-true", "bf16-mixed"])
    parser.add_argument("--repeats", type=int, default=5, help="timed steps per round (after 2 warm-up steps)")
    parser.add_argument("--rounds", type=int, default=rounds, help="rounds, alternating between the rows compared")
    parser.add_argument("--models", nargs="+", default=models, choices=list(MODELS))
    parser.add_argument("--compile", action="store_true", help="torch.compile each module's network")
    if methods is not None:
        parser.add_argument("--methods", nargs="+", default=list(methods), choices=list(methods))
    return parser


def start(args: argparse.Namespace) -> None:
    """Quiet Lightning, seed torch and print the line that says where the table was measured."""
    quiet()
    torch.manual_seed(0)
    where = torch.cuda.get_device_name() if args.device == "cuda" else f"{torch.get_num_threads()} CPU threads"
    compiled = ", torch.compile" if getattr(args, "compile", False) else ""
    print(f"device {args.device} ({where}), precision {args.precision}{compiled}, torch {torch.__version__}\n")


def compiled(module: MaskMatchModule, args: argparse.Namespace) -> MaskMatchModule:
    """``module`` with its network under ``torch.compile`` when ``--compile`` was given (the wrapped
    network's other methods, such as ``forward_token_masked``, run eagerly)."""
    if getattr(args, "compile", False):
        module.network.net = torch.compile(module.network.net)
    return module


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def fixmatch_module(kwargs: dict, teacher_pass: str, device: str) -> MaskMatchModule:
    """Our FixMatch as the reference configures it: one scale, no masked view, SGD, every
    student forward in the BatchNorm statistics, tau 0.95."""
    kwargs = {k: v for k, v in kwargs.items() if k != "mask_patch_size"}
    module = module_from_flat_knobs(
        num_classes=11,
        encoder_weights=None,
        masked_weight=0.0,
        pseudo_label_scales=[1.0],
        norm_stats="all",
        teacher_pass=teacher_pass,
        optimizer="sgd",
        lr=LR,
        lr_multi=LR_MULTI,
        conf_threshold=TAU,
        **kwargs,
    )
    return module.to(device)


def main() -> None:
    parser = speed_parser(__doc__, rounds=3, models=list(MODELS))  # a round: the plain loop, then Lightning
    parser.add_argument("--batch", type=int, default=None, help="override the per-model batch size")
    args = parser.parse_args()
    start(args)
    print(
        "| model | batch (labeled + unlabeled) | teacher pass | plain loop, same passes (ms) "
        "| ours under Lightning (ms) | ours / plain | fixmatch.py as written (ms) | ours / as written |\n"
        "|---|---|---|---|---|---|---|---|"
    )
    for name in args.models:
        kwargs, size, batch_size = MODELS[name]
        batch_size = args.batch or batch_size
        batch = make_batch(size, batch_size, args.device)
        for teacher_pass in ("joint", "eval"):
            module = fixmatch_module(kwargs, teacher_pass, args.device)
            initial = copy.deepcopy(module.state_dict())
            plain_step_time(module.network.net, batch, args, 1, teacher_pass, False)  # warm-up, not counted
            plain, ours, written = [], [], []
            for _ in range(args.rounds):
                module.load_state_dict(initial)
                plain.append(plain_step_time(module.network.net, batch, args, args.repeats, teacher_pass, False))
                if teacher_pass == "joint":
                    module.load_state_dict(initial)
                    written.append(plain_step_time(module.network.net, batch, args, args.repeats, "joint", True))
                module.load_state_dict(initial)
                ours.append(lightning_step_time(module, batch, args, args.repeats))
            p, o = statistics.median(plain), statistics.median(ours)
            w = (
                f"{statistics.median(written) * 1000:.1f} | {o / statistics.median(written):.2f}x"
                if written
                else "— | —"
            )
            print(
                f"| {name} | {batch_size} + {batch_size} | {teacher_pass} | {p * 1000:.1f} | {o * 1000:.1f} "
                f"| {o / p:.2f}x | {w} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
