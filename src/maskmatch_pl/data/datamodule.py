"""SemiSupervisedDataModule: labeled + unlabeled training loaders, val/test/predict loaders."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Literal

import lightning as L
import torch
from lightning.pytorch.utilities import CombinedLoader
from torch.utils.data import DataLoader, Dataset

from .datasets import (
    EvalDataset,
    LabeledDataset,
    SampleReader,
    UnlabeledDataset,
    check_labeled_values,
    pad_collate,
    verify_samples,
)
from .demo import build_demo_dataset
from .presets import PRESETS, palette_for
from .samplers import EpochShuffleSampler, ResumableDataLoader, ShardSampler
from .sources import DataSourceError, Sample, load_samples
from .splits import PUBLISHED, published_splits_dir
from .testbeds import build_testbed

DatasetName = Literal["demo", "faces", "defects", "scenes", "pascal", "cityscapes", "custom"]
GENERATED = ("demo", "faces", "defects", "scenes")  # built on first use into the cache folder


class SemiSupervisedDataModule(L.LightningDataModule):
    """Pairs a labeled and an unlabeled training set, plus val/test/predict sets.

    Training batches are ``{"labeled": {...}, "unlabeled": {...}}`` (see
    :mod:`maskmatch_pl.batch`), from a ``CombinedLoader`` in ``max_size_cycle`` mode; the
    labeled list is cycled to the length of the unlabeled one, so an epoch is one pass over
    the unlabeled set, as in UniMatch.

    Args:
        dataset: ``demo`` (digit canvases), ``faces`` (fine-grained items), ``defects`` (binary,
            1-5 % foreground) or ``scenes`` (street scenes in miniature; :mod:`maskmatch_pl.data.testbeds`),
            built on first use; ``pascal``,
            ``cityscapes`` (class names and palettes preset) or ``custom``.
        root: data root; split-file paths are relative to it (demo: the cache folder).
        split: a split name: ``labeled``/``unlabeled`` default to
            ``<splits_dir>/<split>/{labeled,unlabeled}.txt`` and ``val`` to ``<splits_dir>/val.txt``.
        splits_dir: folder of split files (default ``<root>/splits``; for ``pascal`` and
            ``cityscapes`` without either, UniMatch's published splits shipped with the package).
        labeled: labeled training images: a split file or an ``images/`` + ``masks/`` folder;
            overrides ``split``.
        unlabeled: unlabeled training images: a split file, an ``images/`` + ``masks/`` folder or
            a plain image folder; overrides ``split``.
        val: validation images: a split file or an ``images/`` + ``masks/`` folder; overrides
            ``split``.
        test: test images: a split file or an ``images/`` + ``masks/`` folder (default: ``val``).
        predict: images to predict: a split file, an ``images/`` + ``masks/`` folder or a plain
            image folder.
        num_classes: number of classes; required for ``custom`` (``binary``: 2), preset otherwise.
        class_names: class names for the per-class logs (default: the preset's, else ``0``,
            ``1``, ...).
        crop_size: side of the square training crop, in pixels.
        scale_range: range ``[low, high]`` of the random rescale factor of the training images,
            drawn uniformly before the crop.
        batch_size: per-process batch size of the labeled training images.
        unlabeled_batch_size: per-process batch size of the unlabeled training images (default
            ``batch_size``).
        val_batch_size: per-process batch size of val, test and predict; batches of unequal
            images are padded.
        num_workers: loader worker processes.
        strong_views: strong views per unlabeled image (2 for UniMatch).
        mask_mapping: stored mask value -> class (e.g. ``{255: 1}`` for 0/255 masks).
        binary: binary masks: class 1 = values above half of each file's largest (0/1 and 0/255 masks;
            anti-aliased edges split at 128), class 0 below.
        image_bits: the bit depth (8..16) of 16-bit images' data, grey or colour (e.g. 12 for microscopy or
            remote-sensing exports that store 0..4095 in 16 bits): 0..2^bits - 1 is spread over 0..255.
            ``None``: 16 bits (``v / 257``), with a warning when an image's values fit in 12 bits.
        cache_dir: where the demo dataset is generated (default ``$MASKMATCH_PL_CACHE`` or
            ``~/.cache/maskmatch_pl``).
        verify: before training, check every file so that a bad one stops the run at once with
            its name (not hours in): ``full`` (default) decodes every image and mask once,
            ``headers`` reads the masks and only the image headers (faster; a truncated image is
            found when it is first used), ``off`` checks nothing.
        unlabeled_masks_for_monitoring: also read the masks of the unlabeled images (split-file
            lines with a mask, or ``images/`` + ``masks/``) and pass them as ``monitor_mask``, so
            that the model logs how good its pseudo-labels are (``pseudo/*``); no loss reads them.
    """

    def __init__(
        self,
        dataset: DatasetName = "custom",
        root: str | None = None,
        split: str | int | None = None,
        splits_dir: str | None = None,
        labeled: str | None = None,
        unlabeled: str | None = None,
        val: str | None = None,
        test: str | None = None,
        predict: str | None = None,
        num_classes: int | None = None,
        class_names: list[str] | None = None,
        crop_size: int = 320,
        scale_range: tuple[float, float] = (0.5, 2.0),
        batch_size: int = 8,
        unlabeled_batch_size: int | None = None,
        val_batch_size: int = 1,
        num_workers: int = 4,
        strong_views: int = 1,
        mask_mapping: dict[int, int] | None = None,
        binary: bool = False,
        image_bits: int | None = None,
        cache_dir: str | None = None,
        verify: Literal["full", "headers", "off"] = "full",
        unlabeled_masks_for_monitoring: bool = False,
    ) -> None:
        super().__init__()
        if crop_size < 1:
            raise ValueError(f"data.crop_size must be a positive number of pixels, got {crop_size}")
        if not 0 < scale_range[0] <= scale_range[1]:
            raise ValueError(f"data.scale_range must be [low, high] with 0 < low <= high, got {list(scale_range)}")
        for name, size in (
            ("batch_size", batch_size),
            ("unlabeled_batch_size", unlabeled_batch_size or 1),
            ("val_batch_size", val_batch_size),
            ("strong_views", strong_views),
        ):
            if size < 1:
                raise ValueError(f"data.{name} must be >= 1, got {size}")
        if verify not in ("full", "headers", "off"):
            raise ValueError(f"data.verify must be 'full', 'headers' or 'off', got {verify!r}")
        if isinstance(split, int):
            split = str(split)  # classic VOC splits are numbers: 92, 1464
        self.save_hyperparameters(ignore=["num_classes", "class_names"])  # the model holds the resolved ones
        if num_classes is not None and num_classes < 2:
            raise ValueError(
                f"data.num_classes is {num_classes}, but a segmentation model needs at least two classes: binary data "
                "has two, "
                "background (0) and foreground (1). Set `data.num_classes: 2`, or `data.binary: true` and leave "
                "num_classes out"
            )
        if binary and not mask_mapping and num_classes not in (None, 2):
            raise ValueError(
                f"data.binary: true maps every non-zero mask value to class 1, so the data has 2 classes "
                f"(background and foreground), but data.num_classes is {num_classes}: set num_classes 2 or leave it out"
            )
        preset = PRESETS.get(dataset)
        self.num_classes = num_classes or (2 if binary else None) or (preset.num_classes if preset else None)
        if self.num_classes is None:
            raise ValueError(
                "data.num_classes is required for a custom dataset (e.g. `num_classes: 2` for binary masks)"
            )
        names = class_names or (preset.class_names if preset and preset.num_classes == self.num_classes else None)
        self.class_names = names or [str(i) for i in range(self.num_classes)]
        if len(self.class_names) != self.num_classes:
            raise ValueError(f"class_names has {len(self.class_names)} names but num_classes is {self.num_classes}")
        self.palette = palette_for(self.num_classes, dataset)
        if dataset in GENERATED and split is None and labeled is None:
            self.hparams.split = "1_16"
        self.reader = SampleReader(self.num_classes, mask_mapping, binary, image_bits)
        self._datasets: dict[str, Dataset] = {}
        self._train_loaders: list[ResumableDataLoader] = []
        self._resume_position = (0, 0)  # (epoch, batches done) restored from a checkpoint

    # ---------------------------------------------------------------- sources
    @property
    def root(self) -> Path | None:
        if self.hparams.dataset in GENERATED and self.hparams.root is None:
            return self._build_generated()
        return Path(self.hparams.root).expanduser() if self.hparams.root else None

    def _source(self, stage: str) -> str | Path | None:
        hp = self.hparams
        explicit = getattr(hp, stage)
        if explicit is not None:
            return explicit
        if stage == "test":
            return self._source("val")
        if stage == "predict":
            return None
        splits_dir = self.splits_dir
        if splits_dir is None or (hp.split is None and stage != "val"):
            return None
        return splits_dir / "val.txt" if stage == "val" else splits_dir / hp.split / f"{stage}.txt"

    @property
    def splits_dir(self) -> Path | None:
        """``data.splits_dir``, else ``<root>/splits``; for ``pascal`` and ``cityscapes`` without
        either, UniMatch's published split files that ship with the package."""
        hp = self.hparams
        if hp.splits_dir:
            return Path(hp.splits_dir).expanduser()
        own = self.root / "splits" if self.root else None
        if (own is None or not own.is_dir()) and hp.dataset in PUBLISHED:
            return published_splits_dir(hp.dataset, hp.cache_dir)
        return own

    def split_file(self, stage: str) -> Path | None:
        """The split file that ``labeled``, ``unlabeled`` or ``val`` is read from (None: a folder
        or nothing is given)."""
        source = self._source(stage)
        return Path(source) if source is not None and Path(source).suffix == ".txt" else None

    def samples(self, stage: str) -> list[Sample]:
        """The samples of ``labeled``, ``unlabeled``, ``val``, ``test`` or ``predict``, checked
        as ``verify`` says."""
        source = self._source(stage)
        if source is None:
            raise ValueError(f"no {stage} data: set data.{stage} (a split file or folder) or data.split and data.root")
        explicit = getattr(self.hparams, stage, None) is not None
        if not explicit and not Path(source).exists():
            raise DataSourceError(self._missing_split(Path(source)))
        monitored = stage == "unlabeled" and self.hparams.unlabeled_masks_for_monitoring
        samples = load_samples(source, self.root, need_masks=monitored or stage in ("labeled", "val", "test"))
        if self.hparams.verify != "off":
            # a training image must keep a pixel per side after the random rescale by scale_range's lower end
            min_side = math.ceil(1 / self.hparams.scale_range[0] - 1e-9) if stage in ("labeled", "unlabeled") else 1
            values = verify_samples(
                self.reader, samples, decode=self.hparams.verify == "full", what=f"{stage} data", min_side=min_side
            )
            if stage in ("labeled", "val", "test"):
                check_labeled_values(values, self.num_classes, self.class_names, source, warn_absent=stage == "labeled")
        return samples

    def _missing_split(self, source: Path) -> str:
        """What is wrong when a split file is missing: the splits that exist, or the folder."""
        splits_dir = source.parent if source.name == "val.txt" else source.parent.parent
        if not splits_dir.is_dir():
            return (
                f"{source} does not exist: no split files in {splits_dir}. Put UniMatch's splits/<dataset> folder "
                f"there, set data.splits_dir, or name data.labeled / data.unlabeled / data.val directly"
            )
        known = sorted(p.name for p in splits_dir.iterdir() if (p / "labeled.txt").is_file())
        message = f"{source} does not exist; the splits in {splits_dir} are: {', '.join(known) or 'none'}"
        split = self.hparams.split or ""
        misread = [name for name in known if name.replace("_", "") == split and "_" in name]
        if misread:
            message += f". YAML reads {misread[0]} as the number {split}: quote it, split: '{misread[0]}'"
        return message

    def _build_generated(self) -> Path:
        if self.hparams.dataset == "demo":
            return build_demo_dataset(self.hparams.cache_dir)
        return build_testbed(self.hparams.dataset, self.hparams.cache_dir)

    def prepare_data(self) -> None:
        if self.hparams.dataset in GENERATED and self.hparams.root is None:
            self._build_generated()

    def setup(self, stage: str) -> None:
        hp = self.hparams
        if stage == "fit":
            unlabeled = self.samples("unlabeled") if self._source("unlabeled") else []
            labeled = self.samples("labeled")
            seed = torch.initial_seed() % 2**31  # augmentations follow seed_everything
            self._datasets["labeled"] = LabeledDataset(
                labeled, self.reader, hp.crop_size, hp.scale_range, seed=seed, length=len(unlabeled)
            )
            if unlabeled:
                self._datasets["unlabeled"] = UnlabeledDataset(
                    unlabeled,
                    self.reader,
                    hp.crop_size,
                    hp.scale_range,
                    seed=seed,
                    strong_views=hp.strong_views,
                    monitor_masks=hp.unlabeled_masks_for_monitoring,
                )
            self._check_batches_fit()
        if stage in ("fit", "validate"):
            self._datasets["val"] = EvalDataset(self.samples("val"), self.reader)
        if stage == "test":
            self._datasets["test"] = EvalDataset(self.samples("test"), self.reader)
        if stage == "predict":
            self._datasets["predict"] = EvalDataset(self.samples("predict"), self.reader, with_masks=False)

    def _check_batches_fit(self) -> None:
        """Refuse a training set smaller than one batch per process (Lightning would train on
        nothing and exit with success)."""
        world_size, _ = self._ranks()
        sizes = {
            "labeled": self.hparams.batch_size,
            "unlabeled": self.hparams.unlabeled_batch_size or self.hparams.batch_size,
        }
        for name, batch_size in sizes.items():
            if name in self._datasets and len(self._datasets[name]) // world_size < batch_size:
                key = "batch_size" if name == "labeled" else "unlabeled_batch_size"
                raise ValueError(
                    f"the {name} training set has {len(self._datasets[name])} images, less than one batch of "
                    f"{batch_size} per process ({world_size} processes): lower data.{key} or add images"
                )

    def dataset(self, stage: str) -> Dataset:
        """The dataset of ``labeled``, ``unlabeled``, ``val``, ``test`` or ``predict``, built by
        :meth:`setup` (``fit`` builds labeled, unlabeled and val; ``validate`` val)."""
        if stage not in self._datasets:
            built = ", ".join(sorted(self._datasets)) or "none yet"
            raise ValueError(f"no {stage!r} dataset: call setup() for the stage that builds it first (built: {built})")
        return self._datasets[stage]

    # ---------------------------------------------------------------- loaders
    def _ranks(self) -> tuple[int, int]:
        trainer = self.trainer
        return (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)

    def _loader(self, dataset: Dataset, batch_size: int, train: bool) -> DataLoader:
        world_size, rank = self._ranks()
        if train:
            sampler = EpochShuffleSampler(dataset, world_size, rank, seed=torch.initial_seed() % 2**31)
        else:
            sampler = ShardSampler(dataset, world_size, rank)
        workers = self.hparams.num_workers
        return (ResumableDataLoader if train else DataLoader)(
            dataset,
            batch_size=batch_size,
            sampler=sampler,
            drop_last=train,
            num_workers=workers,
            collate_fn=None if train else pad_collate,
            persistent_workers=workers > 0,
            pin_memory=torch.cuda.is_available(),
        )

    def train_dataloader(self) -> CombinedLoader:
        hp = self.hparams
        loaders: dict[str, Any] = {"labeled": self._loader(self._datasets["labeled"], hp.batch_size, train=True)}
        if "unlabeled" in self._datasets:
            loaders["unlabeled"] = self._loader(
                self._datasets["unlabeled"], hp.unlabeled_batch_size or hp.batch_size, train=True
            )
        self._train_loaders = list(loaders.values())
        for loader in self._train_loaders:
            loader.resume(*self._resume_position)
        return CombinedLoader(loaders, mode="max_size_cycle")

    # ---------------------------------------------------------------- resume
    def state_dict(self) -> dict[str, int]:
        """The data position, saved in checkpoints: the epoch and the batches of it already
        trained on (not those prefetched), so that ``--ckpt_path`` resumes mid-epoch exactly."""
        if self.trainer is None:
            return {}
        progress = self.trainer.fit_loop.epoch_loop.batch_progress.current
        return {"epoch": self.trainer.current_epoch, "batches_done": progress.processed}

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        self._resume_position = (int(state_dict.get("epoch", 0)), int(state_dict.get("batches_done", 0)))
        for loader in self._train_loaders:
            loader.resume(*self._resume_position)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self._datasets["val"], self.hparams.val_batch_size, train=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self._datasets["test"], self.hparams.val_batch_size, train=False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader(self._datasets["predict"], self.hparams.val_batch_size, train=False)
