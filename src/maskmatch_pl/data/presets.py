"""Known datasets: class names, palettes and where their split files live."""

from __future__ import annotations

from dataclasses import dataclass

from ..palettes import CITYSCAPES_PALETTE, voc_palette
from .scenes import SCENE_CLASSES, SCENE_PALETTE

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
DEMO_CLASSES = ["background"] + [f"digit_{d}" for d in range(10)]
FACES_CLASSES = [  # the OpenMoji faces of maskmatch_pl.data.testbeds, in its FACE_CODES order
    "background",
    "grinning",
    "grinning_big_eyes",
    "grinning_smiling_eyes",
    "beaming",
    "slightly_smiling",
    "smiling_eyes",
    "neutral",
    "expressionless",
    "no_mouth",
    "slightly_frowning",
]
DEFECTS_CLASSES = ["background", "defect"]


@dataclass(frozen=True)
class DatasetPreset:
    num_classes: int
    class_names: list[str]
    palette: list[tuple[int, int, int]]


PRESETS: dict[str, DatasetPreset] = {
    "pascal": DatasetPreset(21, VOC_CLASSES, voc_palette(21)),
    "cityscapes": DatasetPreset(19, CITYSCAPES_CLASSES, CITYSCAPES_PALETTE),
    "demo": DatasetPreset(11, DEMO_CLASSES, voc_palette(11)),
    "faces": DatasetPreset(11, FACES_CLASSES, voc_palette(11)),
    "defects": DatasetPreset(2, DEFECTS_CLASSES, voc_palette(2)),
    "scenes": DatasetPreset(len(SCENE_CLASSES), SCENE_CLASSES, SCENE_PALETTE),
}


def palette_for(num_classes: int, dataset: str | None = None) -> list[tuple[int, int, int]]:
    """The dataset's palette, or the VOC colour map for ``num_classes`` classes."""
    if dataset in PRESETS and len(PRESETS[dataset].palette) >= num_classes:
        return PRESETS[dataset].palette
    return voc_palette(max(num_classes, 1))
