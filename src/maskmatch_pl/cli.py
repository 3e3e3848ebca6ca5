"""The ``maskmatch-pl`` command: Lightning's CLI over MaskMatchModule and SemiSupervisedDataModule."""

from __future__ import annotations

from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from .data.datamodule import SemiSupervisedDataModule
from .module import MaskMatchModule
from .prediction import PredictionWriter


class MaskMatchCLI(LightningCLI):
    """``fit`` / ``validate`` / ``test`` / ``predict`` with ``model:``, ``data:``, ``trainer:`` and
    ``prediction:`` config sections. Linked: ``data.num_classes`` and ``data.class_names`` go
    to the model, ``model.strong_views`` to the data (one knob makes UniMatch's two views), and
    an unset ``model.eval_crop_size`` is the data's ``crop_size``."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_lightning_class_args(PredictionWriter, "prediction")
        parser.link_arguments("data.num_classes", "model.num_classes", apply_on="instantiate")
        parser.link_arguments("data.class_names", "model.class_names", apply_on="instantiate")
        parser.link_arguments("model.strong_views", "data.strong_views", apply_on="parse")

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        if config.model.get("eval_crop_size") is None:
            config.model.eval_crop_size = config.data.crop_size


def main(args: list[str] | None = None) -> None:
    """Entry point of the ``maskmatch-pl`` console script (``args`` default to ``sys.argv``)."""
    MaskMatchCLI(
        MaskMatchModule,
        SemiSupervisedDataModule,
        seed_everything_default=0,
        args=args,
        save_config_kwargs={"overwrite": False},
    )


if __name__ == "__main__":
    main()
