"""Known datasets: class names, palettes and where their split files live."""

from __future__ import annotations

from dataclasses import dataclass

VOC_CLASSES = [
    "background",
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
]
CITYSCAPES_CLASSES = [
    "road",
    "sidewalk",
    "building",
    "wall",
    "fence",
    "pole",
    "traffic_light",
    "traffic_sign",
    "vegetation",
    "terrain",
    "sky",
    "person",
    "rider",
    "car",
    "truck",
    "bus",
    "train",
    "motorcycle",
    "bicycle",
]
CITYSCAPES_PALETTE = [
    (128, 64, 128),
    (244, 35, 232),
    (70, 70, 70),
    (102, 102, 156),
    (190, 153, 153),
    (153, 153, 153),
    (250, 170, 30),
    (220, 220, 0),
    (107, 142, 35),
    (152, 251, 152),
    (70, 130, 180),
    (220, 20, 60),
    (255, 0, 0),
    (0, 0, 142),
    (0, 0, 70),
    (0, 60, 100),
    (0, 80, 100),
    (0, 0, 230),
    (119, 11, 32),
]
DEMO_CLASSES = ["background"] + [f"digit_{d}" for d in range(10)]


def voc_palette(n: int = 256) -> list[tuple[int, int, int]]:
    """The Pascal VOC colour map (bit-interleaved), entry 255 is the ignore colour."""
    palette = []
    for index in range(n):
        r = g = b = 0
        c = index
        for shift in range(7, -1, -1):
            r |= ((c >> 0) & 1) << shift
            g |= ((c >> 1) & 1) << shift
            b |= ((c >> 2) & 1) << shift
            c >>= 3
        palette.append((r, g, b))
    return palette


@dataclass(frozen=True)
class DatasetPreset:
    num_classes: int
    class_names: list[str]
    palette: list[tuple[int, int, int]]


PRESETS: dict[str, DatasetPreset] = {
    "pascal": DatasetPreset(21, VOC_CLASSES, voc_palette(21)),
    "cityscapes": DatasetPreset(19, CITYSCAPES_CLASSES, CITYSCAPES_PALETTE),
    "demo": DatasetPreset(11, DEMO_CLASSES, voc_palette(11)),
}


def palette_for(num_classes: int, dataset: str | None = None) -> list[tuple[int, int, int]]:
    """The dataset's palette, or the VOC colour map for ``num_classes`` classes."""
    if dataset in PRESETS and len(PRESETS[dataset].palette) >= num_classes:
        return PRESETS[dataset].palette
    return voc_palette(max(num_classes, 1))
