"""The gain on a second dataset: the demo configs on glyph canvases they were never tuned on.

The demo's settings (model, LR, tau, masked weight, steps) were chosen on digit canvases. A user
brings other data, and so do the checks this project's results must pass. This builds a second
dataset of the same kind and trains each method on it through the real CLI, as a user's
``dataset: custom`` data, with the demo configs unchanged apart from the data:

- **Items**: ten capital letters (A B C D E F G H K R, chosen so that some pairs share strokes:
  B/R, E/F, C/G) rendered from the text fonts that matplotlib ships (DejaVu, STIX, Computer
  Modern; regular, bold, italic), each at a random size, rotation (+-20 degrees) and shear, into
  28 x 28 coverage images like MNIST's; 500 per letter. Nothing is downloaded.
- **Canvases**: the demo's generator (``write_canvas_dataset``: 1-3 items per 64-px canvas,
  thickened strokes, coloured, no overlaps, ignore on the rims), 1,600 train canvases and 250 val.
- **Labels**: split ``64``: 64 labeled, 1,536 unlabeled; ``full``: all 1,600 labeled.

The canvases are cached per matplotlib and Pillow version (fonts and rasteriser decide the glyphs);
the cache's ``COMPLETE`` file lists the fonts.

    python experiments/second_dataset.py                       # the six rows, seeds 0 1
    python experiments/second_dataset.py --seeds 0 1 2 --methods fixmatch maskmatch
    python experiments/second_dataset.py --table-only          # the table from saved runs

Runs land under ``experiments/results/second-dataset/<method>/64/seed<k>/result.json``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "experiments"))

from ablation import CEILING, run_one  # noqa: E402

LETTERS = "ABCDEFGHKR"
CLASS_NAMES = ["background", *(f"letter_{letter}" for letter in LETTERS)]
PER_LETTER, GLYPH, BOX = 500, 28, 20  # like MNIST: the item fits a 20 x 20 box centred in 28 x 28
TRAIN_CANVASES, VAL_CANVASES, LABELED = 1600, 250, 64
SPLIT = str(LABELED)
VERSION = "v1"
# text fonts only (matplotlib also ships symbol, size-variant and display fonts, which draw no letters)
FONT_PREFIXES = ("DejaVuSans", "DejaVuSerif", "STIXGeneral", "cmr10", "cmss10", "cmtt10", "cmb10", "cmti10")


def text_fonts() -> list[Path]:
    """The letter-drawing fonts matplotlib ships (a dev dependency), in a fixed order."""
    try:
        import matplotlib
    except ImportError as error:  # pragma: no cover - in the dev extra
        raise ImportError(
            "the second dataset draws its letters with matplotlib's fonts: pip install matplotlib"
        ) from error
    folder = Path(matplotlib.get_data_path()) / "fonts" / "ttf"
    fonts = sorted(
        path for path in folder.glob("*.ttf") if path.name.startswith(FONT_PREFIXES) and "Display" not in path.name
    )
    if not fonts:
        raise FileNotFoundError(f"no text fonts ({', '.join(FONT_PREFIXES)}) in {folder}")
    return fonts


def render_glyph(letter: str, font_path: Path, rng: np.random.Generator) -> np.ndarray:
    """One letter as a ``uint8 [28, 28]`` coverage image: random rotation and shear, fitted into a
    20 x 20 box (aspect kept) and centred, white on black like an MNIST digit."""
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.truetype(str(font_path), 64)
    canvas = Image.new("L", (128, 128), 0)
    ImageDraw.Draw(canvas).text((64, 64), letter, fill=255, font=font, anchor="mm")
    shear = rng.uniform(-0.3, 0.3)
    canvas = canvas.transform(canvas.size, Image.AFFINE, (1, shear, -shear * 64, 0, 1, 0), Image.BILINEAR)
    canvas = canvas.rotate(rng.uniform(-20, 20), Image.BILINEAR)
    box = canvas.getbbox()
    if box is None:
        raise ValueError(f"font {font_path.name} draws nothing for {letter!r}")
    item = canvas.crop(box)
    scale = BOX * rng.uniform(0.8, 1.0) / max(item.size)
    item = item.resize((max(1, round(item.width * scale)), max(1, round(item.height * scale))), Image.BILINEAR)
    glyph = Image.new("L", (GLYPH, GLYPH), 0)
    glyph.paste(item, ((GLYPH - item.width) // 2, (GLYPH - item.height) // 2))
    return np.asarray(glyph)


def render_glyphs(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``PER_LETTER`` glyphs of each letter, each from a font drawn at random: ``uint8 [n, 28, 28]``
    and labels ``[n]`` (0-9, the index in ``LETTERS``)."""
    fonts = text_fonts()
    rng = np.random.default_rng(seed)
    glyphs, labels = [], []
    for label, letter in enumerate(LETTERS):
        for _ in range(PER_LETTER):
            glyphs.append(render_glyph(letter, fonts[rng.integers(len(fonts))], rng))
            labels.append(label)
    return np.stack(glyphs), np.array(labels)


def build_glyph_canvases(seed: int = 0) -> Path:
    """The glyph canvases, built once into the demo cache (``$MASKMATCH_PL_CACHE``)."""
    import matplotlib
    import PIL

    from maskmatch_pl.data.demo import build_once, default_cache_dir, write_canvas_dataset

    # the glyphs depend on the fonts and the rasteriser: a cache per matplotlib and Pillow version
    versions = f"matplotlib{matplotlib.__version__}-pillow{PIL.__version__}"
    root = default_cache_dir() / f"glyph-canvases-{VERSION}-{versions}-seed{seed}"

    def fill(staging: Path) -> None:
        counts = {SPLIT: LABELED, "full": TRAIN_CANVASES}
        write_canvas_dataset(
            staging,
            *render_glyphs(seed),
            seed,
            train_canvases=TRAIN_CANVASES,
            val_canvases=VAL_CANVASES,
            labeled_counts=counts,
        )

    fonts = ", ".join(font.name for font in text_fonts())
    return build_once(root, fill, f"maskmatch-pl glyph canvases {VERSION}, seed {seed}, {versions}, fonts: {fonts}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    methods = ["supervised", "fixmatch", "maskmatch", "unimatch", "unimatch+maskmatch", CEILING]
    parser.add_argument("--methods", nargs="+", default=methods)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--val-every", type=int, default=250)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--out", type=Path, default=REPO / "experiments" / "results" / "second-dataset")
    what = parser.add_mutually_exclusive_group()
    what.add_argument("--force", action="store_true", help="retrain cells that already have a result.json")
    what.add_argument("--table-only", action="store_true", help="print the table from saved runs, train nothing")
    args = parser.parse_args()
    args.out = args.out.resolve()
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    args.extra = []
    if not args.table_only:  # printing saved runs needs no canvases
        args.extra = [
            "--data.dataset=custom",
            f"--data.root={build_glyph_canvases()}",
            f"--data.num_classes={len(CLASS_NAMES)}",
            f"--data.class_names=[{', '.join(CLASS_NAMES)}]",
        ]
    rows = {}
    for method in args.methods:
        results = []
        for seed in args.seeds:
            result_file = args.out / method / SPLIT / f"seed{seed}" / "result.json"
            if args.table_only and not result_file.is_file():
                continue
            results.append(run_one(method, SPLIT, seed, args))
        if results:
            rows[method] = results
    base = rows.get("supervised")
    ceiling = rows.get(CEILING)
    print(f"glyph canvases, {LABELED} labeled / {TRAIN_CANVASES - LABELED} unlabeled, {args.steps} steps")
    print(
        "| method | val mIoU % per seed | mean ± std | gain over supervised | gap closed "
        "| pseudo-label mIoU % | time / run (s) |"
    )
    print("|---|---|---|---|---|---|---|")
    mean = {name: statistics.mean(r["miou"] * 100 for r in results) for name, results in rows.items()}
    for method, results in rows.items():
        values = [r["miou"] * 100 for r in results]
        spread = statistics.stdev(values) if len(values) > 1 else 0.0
        gain = closed = "—"
        if base and ceiling and method not in ("supervised", CEILING):
            gain = f"{mean[method] - mean['supervised']:+.1f}"
            gap = mean[CEILING] - mean["supervised"]
            closed = f"{100 * (mean[method] - mean['supervised']) / gap:.0f}%" if gap > 0 else "—"
        seconds = statistics.median(r["seconds"] for r in results)
        scored = [r["pseudo"]["pseudo/mIoU"] * 100 for r in results if "pseudo/mIoU" in r.get("pseudo", {})]
        pseudo = f"{statistics.mean(scored):.1f}" if scored else "—"
        print(
            f"| {method} | {' / '.join(f'{v:.1f}' for v in values)} | {statistics.mean(values):.1f} ± {spread:.1f} "
            f"| {gain} | {closed} | {pseudo} | {seconds:.0f} |"
        )


if __name__ == "__main__":
    main()
