"""The ``maskmatch-pl`` command: Lightning's CLI over MaskMatchModule and SemiSupervisedDataModule."""

from __future__ import annotations

from typing import Any

from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.utilities import rank_zero_info

from .data.datamodule import SemiSupervisedDataModule
from .module import MaskMatchModule
from .prediction import PredictionWriter

EVAL_KNOBS = ("eval_mode", "eval_crop_size", "eval_scales", "eval_flip")  # the command line's win over a checkpoint
NETWORK_KNOBS = ("arch", "encoder_name", "model_kwargs")  # must match the checkpoint's


def _plain(value: Any) -> Any:
    """Config values as plain Python (jsonargparse namespaces and tuples compare as dicts and lists)."""
    if hasattr(value, "as_dict"):
        return value.as_dict()
    return list(value) if isinstance(value, tuple) else value


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

    def _parse_ckpt_path(self) -> None:
        """Lightning fills the model's arguments from ``--ckpt_path``'s hyperparameters; here the
        evaluation knobs of the command line / config win (evaluate or predict a trained model with
        another protocol), a different network is refused, and the log says what came from where."""
        subcommand = self.config.get("subcommand")
        if not subcommand or not self.config[subcommand].get("ckpt_path"):
            return super()._parse_ckpt_path()
        model = self.config[subcommand].model
        ours = {key: model.get(key) for key in (*EVAL_KNOBS, *NETWORK_KNOBS)}
        super()._parse_ckpt_path()
        model = self.config[subcommand].model
        different = [key for key in NETWORK_KNOBS if _plain(model.get(key)) != _plain(ours[key])]
        if different:
            found = ", ".join(
                f"{key}: checkpoint {_plain(model.get(key))!r} vs config {_plain(ours[key])!r}" for key in different
            )
            raise ValueError(
                f"--ckpt_path {self.config[subcommand].ckpt_path} holds another network than the config ({found}); "
                f"use the config the checkpoint was trained with (its config.yaml sits next to its logs)"
            )
        for key in EVAL_KNOBS:
            model[key] = ours[key]
        rank_zero_info(
            "from the checkpoint: the training knobs; from the command line and config: "
            + ", ".join(f"{key}={_plain(ours[key])}" for key in EVAL_KNOBS)
        )

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
