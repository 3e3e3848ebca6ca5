"""maskmatch-pl: MaskMatch semi-supervised semantic segmentation for PyTorch Lightning."""

import os

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # albumentations calls home on import otherwise

from .batch import BatchFormatError, check_batch  # noqa: E402
from .cutmix import cutmix_boxes, partner_indices, paste  # noqa: E402
from .data import SemiSupervisedDataModule, build_demo_dataset  # noqa: E402
from .evaluation import predict_probabilities, sliding_window_probabilities  # noqa: E402
from .losses import consistency_loss, ohem_cross_entropy  # noqa: E402
from .masking import apply_patch_mask, random_patch_mask  # noqa: E402
from .module import MaskMatchModule  # noqa: E402
from .multiscale import multiscale_probabilities, pseudo_labels  # noqa: E402
from .network import SegmentationNetwork  # noqa: E402
from .teacher import ema_momentum, ema_update  # noqa: E402

__version__ = "0.1.0"

__all__ = [
    "BatchFormatError",
    "MaskMatchModule",
    "SegmentationNetwork",
    "SemiSupervisedDataModule",
    "apply_patch_mask",
    "build_demo_dataset",
    "check_batch",
    "consistency_loss",
    "cutmix_boxes",
    "ema_momentum",
    "ema_update",
    "multiscale_probabilities",
    "ohem_cross_entropy",
    "partner_indices",
    "paste",
    "predict_probabilities",
    "pseudo_labels",
    "random_patch_mask",
    "sliding_window_probabilities",
]
