"""How a training step's time and memory grow with crop size and batch (CPU).

    python benchmarks/scaling.py                      # DLV3+ ResNet-50, crops 160/320/480 x batch 2/4/8
    python benchmarks/scaling.py --crops 160 320 --batches 2 4

Each cell runs in a fresh process: the MaskMatch step with the paper's defaults (teacher
pseudo-labels fused over 0.75/1/1.25, the masked view, one forward per view), batch B
labeled + B unlabeled, called directly (``training_step`` + backward + SGD step; Lightning
adds little, see ``reference_loop.py``): one warm-up step, then the median of the timed steps,
and the process's peak resident memory (model, optimiser state and interpreter included). A
cell whose memory, extrapolated from the cells measured before it, would not fit in the
machine's available memory is skipped and says so.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

CELL = """
import json, statistics, time, torch
from maskmatch_pl import MaskMatchModule
from maskmatch_pl.compat import module_from_flat_knobs
from step_profile import make_batch, own_peak_mib
torch.manual_seed(0)
module = module_from_flat_knobs(num_classes=21, arch="DeepLabV3Plus", encoder_name="resnet50", encoder_weights=None)
module.log = lambda *a, **k: None
optimizer = torch.optim.SGD(module.parameters(), lr=1e-3, momentum=0.9)
batch = make_batch({crop}, {batch}, "cpu")
times = []
for _ in range({steps} + 1):
    start = time.perf_counter()
    module.training_step(batch, 1).backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    times.append(time.perf_counter() - start)
peak = own_peak_mib()
print(json.dumps({{"step": statistics.median(times[1:]), "peak_mib": peak}}))
"""


def available_mib() -> float:
    """``MemAvailable`` from ``/proc/meminfo`` in MiB (infinite where there is none)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("inf")


def run_cell(crop: int, batch: int, steps: int) -> dict:
    code = CELL.format(crop=crop, batch=batch, steps=steps)
    out = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).parent, capture_output=True, text=True)
    if out.returncode != 0:
        return {"failed": out.stderr.strip().splitlines()[-1]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--crops", nargs="+", type=int, default=[160, 320, 480])
    parser.add_argument("--batches", nargs="+", type=int, default=[2, 4, 8], help="labeled = unlabeled batch")
    parser.add_argument("--steps", type=int, default=2, help="timed steps per cell (after one warm-up step)")
    args = parser.parse_args()
    import torch

    print(
        f"DeepLabV3+ ResNet-50, MaskMatch step (3 teacher scales, masked view), CPU "
        f"({torch.get_num_threads()} threads), torch {torch.__version__}\n"
    )
    results: dict[tuple[int, int], dict] = {}
    base = None  # (peak MiB, pixels x batch) of the first cell: memory grows about linearly from there
    for crop in args.crops:
        for batch in args.batches:
            load = crop * crop * batch
            if base is not None and results:
                largest = max(results.items(), key=lambda kv: kv[0][0] ** 2 * kv[0][1])
                (c, b), measured = largest
                per_unit = (measured["peak_mib"] - base[0]) / max(c * c * b - base[1], 1)
                predicted = measured["peak_mib"] + per_unit * (load - c * c * b)
                if predicted > 0.85 * available_mib():
                    results[(crop, batch)] = {"skipped": predicted}
                    continue
            results[(crop, batch)] = run_cell(crop, batch, args.steps)
            if "failed" in results[(crop, batch)]:
                print(f"crop {crop}, batch {batch} failed: {results[(crop, batch)]['failed']}", file=sys.stderr)
                del results[(crop, batch)]
                continue
            if base is None:
                base = (results[(crop, batch)]["peak_mib"], load)
            print(f"crop {crop}, batch {batch}: {results[(crop, batch)]}", file=sys.stderr, flush=True)
    header = " | ".join(f"batch {b} + {b}" for b in args.batches)
    print(f"| crop | {header} |\n|---|" + "---|" * len(args.batches))
    for crop in args.crops:
        cells = []
        for batch in args.batches:
            r = results.get((crop, batch), {"failed": True})
            if "failed" in r:
                cells.append("failed (see above)")
            elif "skipped" in r:
                cells.append(f"skipped: ~{r['skipped'] / 1024:.0f} GiB predicted, {available_mib() / 1024:.0f} free")
            else:
                cells.append(f"{r['step']:.1f} s, {r['peak_mib'] / 1024:.1f} GiB")
        print(f"| {crop} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
