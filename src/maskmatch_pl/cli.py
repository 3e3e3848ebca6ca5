"""The ``maskmatch-pl`` command: Lightning's CLI over MaskMatchModule and SemiSupervisedDataModule."""

from __future__ import annotations

import copy
import importlib
import os
import sys
from argparse import SUPPRESS, _SubParsersAction
from pathlib import Path, PurePosixPath
from typing import Any

import torch
from jsonargparse import DefaultHelpFormatter, Namespace
from lightning.fabric.utilities.cloud_io import get_filesystem
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import ArgsType, LightningArgumentParser, LightningCLI, SaveConfigCallback
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_info

from .compat import group_flat_knobs, is_flat
from .config import plain
from .data.datamodule import SemiSupervisedDataModule
from .export import export_main
from .module import MaskMatchModule
from .prediction import PredictionWriter
from .preemption import PreemptionCheckpoint

EVAL_KNOBS = ("mode", "crop_size", "scales", "flip")  # model.evaluation's: the command line's win over a checkpoint
NETWORK_KNOBS = ("arch", "encoder_name", "model_kwargs")  # model.network's: must match the checkpoint's
EVAL_COMMANDS = ("validate", "test", "predict")  # they log under <logger name>/<command>/, not among the fits
FOLDER_LOGGERS = (TensorBoardLogger, CSVLogger)  # the loggers that make a version_N folder per run
OPTIMIZER_OPTIONS = ("--optimizer", "--lr_scheduler")  # LightningCLI's, off here: the model has its own


DESCRIPTION = (
    "Semi-supervised segmentation (MaskMatch, FixMatch, UniMatch) with Lightning: fit, validate, test and predict "
    "below; `maskmatch-pl export --ckpt_path CKPT --output FILE` writes a trained model as ONNX or TorchScript "
    "(maskmatch-pl export --help)."
)


class OneLineHelp(DefaultHelpFormatter):
    """``--help`` with one line per option (its first help sentence, type and default), and a
    one-line usage: every knob of a section on its own line, instead of Lightning's wrapped
    paragraphs. ``--print_config`` shows the values, the docstrings of the groups the rest."""

    def add_usage(self, usage: Any, actions: Any, groups: Any, prefix: str | None = None) -> None:
        if any(isinstance(action, _SubParsersAction) for action in actions):  # maskmatch-pl {fit,validate,...}
            super().add_usage(usage, actions, groups, prefix)
            return
        super().add_usage("%(prog)s [--config CONFIG] [--print_config] [--SECTION.KNOB VALUE ...]", [], [], prefix)

    def _format_action(self, action: Any) -> str:
        if not action.option_strings or action.help == SUPPRESS:
            return super()._format_action(action)
        text = " ".join(self._expand_help(action).split()) if action.help else ""
        long = [option for option in action.option_strings if option.startswith("--") and not option.endswith("+")]
        return f"  {(long or action.option_strings)[0]}  {text}\n"


def _numbered(name: str, number: int) -> str:
    """``config.yaml``, ``config_1.yaml``, ... and ``checkpoints``, ``checkpoints_1``, ..."""
    stem, dot, suffix = name.partition(".")
    return f"{stem}_{number}{dot}{suffix}" if number else name


class SaveRunConfig(SaveConfigCallback):
    """Saves the run's config next to its logs under a name that no file has yet: ``config.yaml``,
    else ``config_1.yaml``, ``config_2.yaml``, ... (runs share a folder without a logger, or with
    a fixed logger version); nothing is ever overwritten.

    Without a logger (``trainer.logger: false``) a fit's checkpoints get the config's number too
    (``checkpoints/``, ``checkpoints_1/``, ... of ``default_root_dir``, where a ModelCheckpoint has
    no ``dirpath``), and validate / test / predict save their config in a ``<command>/``
    sub-folder, away from the fits."""

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if self.already_saved or not self.save_to_log_dir or self.overwrite:
            super().setup(trainer, pl_module, stage)
            return
        folder = trainer.log_dir  # this broadcasts the directory
        assert folder is not None
        loggerless = not trainer.loggers
        if loggerless and stage != "fit":
            folder = os.path.join(folder, stage)
        numbered_checkpoints = loggerless and stage == "fit"
        fs = get_filesystem(folder)
        number = 0
        if trainer.is_global_zero:
            while fs.exists(os.path.join(folder, _numbered(self.config_filename, number))) or (
                numbered_checkpoints and fs.exists(os.path.join(folder, _numbered("checkpoints", number)))
            ):
                number += 1
        number = trainer.strategy.broadcast(number)
        if numbered_checkpoints and number:
            for callback in trainer.checkpoint_callbacks:  # set up after this callback (Lightning puts them last)
                if isinstance(callback, ModelCheckpoint) and callback.dirpath is None:
                    callback.dirpath = os.path.join(folder, _numbered("checkpoints", number))
        if trainer.is_global_zero:
            fs.makedirs(folder, exist_ok=True)
            path = os.path.join(folder, _numbered(self.config_filename, number))
            self.parser.save(self.config, path, skip_none=False, overwrite=False, multifile=self.multifile)
            self.save_config(trainer, pl_module, stage)
            self.already_saved = True
        self.already_saved = trainer.strategy.broadcast(self.already_saved)


class MaskMatchCLI(LightningCLI):
    """``fit`` / ``validate`` / ``test`` / ``predict`` with ``model:``, ``data:``, ``trainer:`` and
    ``prediction:`` config sections. Linked: ``data.num_classes`` and ``data.class_names`` go
    to the model, ``model.views.strong_views`` to the data (one knob makes UniMatch's two views), and
    an unset ``model.evaluation.crop_size`` is the data's ``crop_size``.

    The optimiser and LR schedule are the model's (``model.optimization``: ``optimizer``, ``lr``,
    ``lr_multi``, ``poly_power``, ``warmup_steps``, ...). LightningCLI's ``--optimizer`` /
    ``--lr_scheduler`` are no options here: its automatic ``configure_optimizers`` builds one
    parameter group from ``model.parameters()`` (the decoder's ``lr_multi`` is lost) and steps the
    scheduler once per epoch (the per-step poly decay is lost). validate / test / predict
    log into a ``<command>/`` sub-folder of the logger's folder (e.g.
    ``lightning_logs/validate/version_0``), so that the ``version_N`` folders side by side are
    the training runs."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("auto_configure_optimizers", False)
        kwargs.setdefault("parser_kwargs", {"formatter_class": OneLineHelp, "description": DESCRIPTION})
        kwargs.setdefault("save_config_callback", SaveRunConfig)
        defaults = dict(kwargs.get("trainer_defaults") or {})
        callbacks = defaults.get("callbacks", [])  # SIGTERM saves and exits 143 in every fit (preemption.py)
        defaults["callbacks"] = [*(callbacks if isinstance(callbacks, list) else [callbacks]), PreemptionCheckpoint()]
        kwargs["trainer_defaults"] = defaults
        super().__init__(*args, **kwargs)

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_lightning_class_args(PredictionWriter, "prediction")
        parser.link_arguments("data.num_classes", "model.num_classes", apply_on="instantiate")
        parser.link_arguments("data.class_names", "model.class_names", apply_on="instantiate")
        parser.link_arguments("model.views.strong_views", "data.strong_views", apply_on="parse")
        for action in parser._actions:
            if action.dest == "model.model" and hasattr(action, "extra_help"):
                # jsonargparse lists every imported nn.Module subclass (about 100 help lines); any of them,
                # or one of the user's, is given by class_path, and --model.model.help CLASS shows its arguments
                action.extra_help = lambda: ""

    def parse_arguments(self, parser: LightningArgumentParser, args: ArgsType) -> None:
        for arg in sys.argv[1:] if args is None else args if isinstance(args, list) else []:
            if isinstance(arg, str) and arg.split("=")[0].split(".")[0] in OPTIMIZER_OPTIONS:
                parser.error(
                    f"{arg.split('=')[0]} is not an option: the optimiser and its poly LR schedule are the model's, "
                    "set them with --model.optimization.optimizer (sgd or adamw), --model.optimization.lr, "
                    "lr_multi, weight_decay, momentum, poly_power and warmup_steps"
                )
        super().parse_arguments(parser, args)

    def _parse_ckpt_path(self) -> None:
        """Lightning fills the model's arguments from ``--ckpt_path``'s hyperparameters; here the
        evaluation knobs of the command line / config win (evaluate or predict a trained model with
        another protocol), a different network is refused, and the log says what came from where."""
        subcommand = self.config.get("subcommand")
        if not subcommand or not self.config[subcommand].get("ckpt_path"):
            return super()._parse_ckpt_path()
        model = self.config[subcommand].model
        ours = {"evaluation": copy.deepcopy(model.get("evaluation")), "network": plain(model.get("network"))}
        if not self._parse_flat_checkpoint(self.config[subcommand].ckpt_path):
            super()._parse_ckpt_path()
        model = self.config[subcommand].model
        theirs = plain(model.get("network")) or {}
        different = [key for key in NETWORK_KNOBS if theirs.get(key) != (ours["network"] or {}).get(key)]
        if different:
            found = ", ".join(
                f"network.{key}: checkpoint {theirs.get(key)!r} vs config {(ours['network'] or {}).get(key)!r}"
                for key in different
            )
            raise ValueError(
                f"--ckpt_path {self.config[subcommand].ckpt_path} holds another network than the config ({found}); "
                f"use the config the checkpoint was trained with (its config.yaml sits next to its logs)"
            )
        model.evaluation = ours["evaluation"]
        rank_zero_info(
            "from the checkpoint: the training knobs; from the command line and config: "
            + ", ".join(f"evaluation.{key}={plain(ours['evaluation'].get(key))}" for key in EVAL_KNOBS)
        )

    def _parse_flat_checkpoint(self, ckpt_path: str) -> bool:
        """Lightning parses the checkpoint's hyperparameters as the model's arguments: those of a
        checkpoint written with the flat knobs of earlier versions are read as groups here, in memory
        (the file is left as it is; ``on_load_checkpoint`` reads its weights). False: not flat."""
        path = Path(ckpt_path)
        if not path.is_file():
            return False
        hparams = torch.load(path, weights_only=True, map_location="cpu").get("hyper_parameters", {})
        if not is_flat(hparams):
            return False
        grouped = group_flat_knobs({k: v for k, v in hparams.items() if not k.startswith("_")})
        grouped = {k: v for k, v in grouped.items() if k != "model"}
        rank_zero_info(f"--ckpt_path {path}: flat knobs of an earlier version, read as groups (maskmatch_pl.compat)")
        self.config = self.parser.parse_object({self.config.subcommand: {"model": grouped}}, self.config)
        return True

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        if config.model.evaluation.get("crop_size") is None:
            config.model.evaluation.crop_size = config.data.crop_size
        if self.subcommand in EVAL_COMMANDS:
            _log_evaluation_apart(config.trainer, self.subcommand)


def _log_evaluation_apart(trainer: Namespace, command: str) -> None:
    """Points the trainer's TensorBoard / CSV loggers (Lightning's default one included) at
    ``<save_dir>/<name>/<command>/version_N`` instead of ``<save_dir>/<name>/version_N``, the
    folders of the training runs. Other loggers, and ``logger: false``, are left as they are."""
    logger = trainer.get("logger")
    if logger is False:
        return
    if logger is None or logger is True:  # Lightning's default logger, spelled out
        save_dir = trainer.get("default_root_dir") or os.getcwd()
        logger = Namespace(
            class_path="lightning.pytorch.loggers.TensorBoardLogger",
            init_args=Namespace(save_dir=os.fspath(save_dir), name="lightning_logs"),
        )
    for spec in logger if isinstance(logger, list) else [logger]:
        if not isinstance(spec, Namespace) or not isinstance(spec.get("class_path"), str):
            continue
        module, _, name = spec.class_path.rpartition(".")
        cls = getattr(importlib.import_module(module), name, None) if module else None
        if not (isinstance(cls, type) and issubclass(cls, FOLDER_LOGGERS)):
            continue
        if spec.get("init_args") is None:
            spec.init_args = Namespace()
        folder = spec.init_args.get("name", "lightning_logs")
        if not folder:
            spec.init_args.name = command
        elif PurePosixPath(folder).name != command:  # a config saved by such a run keeps its folder
            spec.init_args.name = f"{folder}/{command}"
    trainer.logger = logger


USAGE_ERROR = 2  # the exit status of a usage error, as argparse / jsonargparse exit on a bad option
TRACEBACK_VARIABLE = "MASKMATCH_PL_TRACEBACK"  # set to 1: user errors raise with their traceback
USER_ERRORS = (ValueError, OSError)  # what our checks raise: a bad value, a missing or unreadable file


def _raised_by_our_check(error: BaseException) -> bool:
    """True when ``error`` was raised by this package's own code (its checks name the file, value
    and expected form); errors raised inside torch, Lightning or another library keep their traceback."""
    package = Path(__file__).resolve().parent
    traceback = error.__traceback__
    while traceback is not None and traceback.tb_next is not None:
        traceback = traceback.tb_next
    return traceback is not None and package in Path(traceback.tb_frame.f_code.co_filename).resolve().parents


def main(args: ArgsType = None) -> None:
    """Entry point of the ``maskmatch-pl`` console script (``args`` default to ``sys.argv``);
    ``maskmatch-pl export ...`` writes a checkpoint's student as ONNX / TorchScript (:mod:`.export`).

    A user error found by the package's checks (a bad file or value: ``ValueError`` / ``OSError``
    raised in :mod:`maskmatch_pl`) prints ``maskmatch-pl: error: <message>`` without a traceback
    and exits with status 2 (usage error); ``MASKMATCH_PL_TRACEBACK=1`` raises it with its traceback.
    Errors raised elsewhere (a library, a bug) keep their traceback."""
    argv = sys.argv[1:] if args is None else args
    try:
        if isinstance(argv, list) and argv[:1] == ["export"]:
            export_main(argv[1:])
            return
        MaskMatchCLI(
            MaskMatchModule,
            SemiSupervisedDataModule,
            seed_everything_default=0,
            args=args,
            save_config_kwargs={"overwrite": False},
        )
    except USER_ERRORS as error:
        if os.environ.get(TRACEBACK_VARIABLE, "") not in ("", "0") or not _raised_by_our_check(error):
            raise
        print(f"maskmatch-pl: error: {error}\n(set {TRACEBACK_VARIABLE}=1 to see where it was raised)", file=sys.stderr)
        raise SystemExit(USAGE_ERROR) from None


if __name__ == "__main__":
    main()
