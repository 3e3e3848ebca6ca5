"""What ``data.verify`` costs before training starts, on a large labeled set.

    python benchmarks/verify_cost.py --images 10000       # generates 10,000 VOC-like pairs once

The set is ``loader_throughput.py``'s VOC-like data (500 x 375 JPEGs with greyscale-PNG masks), as an
``images/`` + ``masks/`` folder read through ``dataset: custom``; the time is that of
``SemiSupervisedDataModule.samples("labeled")``: listing and pairing the files, then ``full`` (decode
every image and mask once), ``headers`` (read the masks and only the images' headers) or ``off``.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from loader_throughput import write_voc_like

from maskmatch_pl import SemiSupervisedDataModule


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=10_000)
    parser.add_argument("--data", default=None, help="where to generate the pairs (default: a temp folder)")
    args = parser.parse_args()
    root = Path(args.data or tempfile.mkdtemp(prefix="verify_cost_"))
    start = time.perf_counter()
    write_voc_like(root, {"labeled": args.images})
    print(f"{args.images} pairs in {root} ({time.perf_counter() - start:.0f} s to generate or find)\n")
    print("| data.verify | seconds | ms per image |\n|---|---|---|")
    for mode in ("off", "headers", "full"):
        data = SemiSupervisedDataModule(labeled=str(root / "labeled"), num_classes=21, verify=mode)
        start = time.perf_counter()
        samples = data.samples("labeled")
        elapsed = time.perf_counter() - start
        assert len(samples) == args.images, len(samples)
        print(f"| {mode} | {elapsed:.1f} | {elapsed / args.images * 1000:.2f} |", flush=True)


if __name__ == "__main__":
    main()
