"""maskmatch-pl: MaskMatch semi-supervised semantic segmentation for PyTorch Lightning."""

import os

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # albumentations calls home on import otherwise

from .batch import BatchFormatError, check_batch  # noqa: E402
from .config import Evaluation, Masking, Network, Optimization, PseudoLabeling, Views, Weights  # noqa: E402
from .cutmix import cutmix, cutmix_boxes, partner_indices, paste  # noqa: E402
from .data import SemiSupervisedDataModule, build_demo_dataset  # noqa: E402
from .evaluation import EvalProtocol, predict_probabilities, sliding_window_probabilities  # noqa: E402
from .health import PseudoLabelHealth  # noqa: E402
from .losses import LossWeights, SupervisedLoss, consistency_loss, ohem_cross_entropy  # noqa: E402
from .masking import PatchMasking, apply_patch_mask, masked_view, random_patch_mask  # noqa: E402
from .module import MaskMatchModule  # noqa: E402
from .monitoring import PseudoLabelMonitor  # noqa: E402
from .multiscale import (  # noqa: E402
    fuse_probabilities,
    image_scale_probabilities,
    multiscale_probabilities,
    pseudo_labels,
    scale_probabilities,
)
from .network import (  # noqa: E402
    SegmentationNetwork,
    forward_views,
    frozen_norm_statistics,
    per_view_norm_statistics,
    running_norm_statistics,
)
from .preemption import PreemptionCheckpoint  # noqa: E402
from .step import MaskMatchStep, StepOutput, TeacherOutput  # noqa: E402
from .targets import IGNORE_INDEX, PseudoLabels  # noqa: E402
from .teacher import Teacher, ema_momentum, ema_update  # noqa: E402
from .thresholds import PseudoLabelThreshold  # noqa: E402
from .visualize import ValPanels  # noqa: E402
from .vit import PatchDPT  # noqa: E402

__version__ = "0.1.0"

__all__ = [
    "IGNORE_INDEX",
    "BatchFormatError",
    "EvalProtocol",
    "LossWeights",
    "MaskMatchModule",
    "Network",
    "PseudoLabeling",
    "Masking",
    "Weights",
    "Views",
    "Optimization",
    "Evaluation",
    "MaskMatchStep",
    "PatchMasking",
    "PreemptionCheckpoint",
    "PseudoLabelHealth",
    "PseudoLabelMonitor",
    "PseudoLabelThreshold",
    "PseudoLabels",
    "SegmentationNetwork",
    "PatchDPT",
    "SemiSupervisedDataModule",
    "StepOutput",
    "SupervisedLoss",
    "Teacher",
    "TeacherOutput",
    "ValPanels",
    "apply_patch_mask",
    "build_demo_dataset",
    "check_batch",
    "consistency_loss",
    "cutmix",
    "cutmix_boxes",
    "ema_momentum",
    "ema_update",
    "forward_views",
    "frozen_norm_statistics",
    "fuse_probabilities",
    "masked_view",
    "image_scale_probabilities",
    "multiscale_probabilities",
    "ohem_cross_entropy",
    "partner_indices",
    "paste",
    "per_view_norm_statistics",
    "predict_probabilities",
    "pseudo_labels",
    "random_patch_mask",
    "running_norm_statistics",
    "scale_probabilities",
    "sliding_window_probabilities",
]
