"""The real CLI: fit on the demo config with a tiny encoder, then validate/test/predict from
the saved checkpoint."""

import inspect
import os
import re
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from maskmatch_pl import (
    Evaluation,
    MaskMatchModule,
    Network,
    Optimization,
    PseudoLabeling,
    SemiSupervisedDataModule,
    SupervisedLoss,
    Views,
    Weights,
    build_demo_dataset,
)
from maskmatch_pl.cli import MaskMatchCLI, main
from maskmatch_pl.experimental import Experimental

from .conftest import tiny_model_args

CONFIGS = ["configs/demo.yaml", "configs/demo_fixmatch.yaml", "configs/demo_supervised.yaml"]


def tiny_args(root, cache, extra=()):
    return [
        *tiny_model_args(),
        f"--data.cache_dir={cache}",
        "--data.num_workers=0",
        "--data.batch_size=2",
        "--data.crop_size=48",
        f"--trainer.default_root_dir={root}",
        "--trainer.logger=lightning.pytorch.loggers.CSVLogger",
        f"--trainer.logger.save_dir={root}",
        "--trainer.enable_progress_bar=false",
        *extra,
    ]


@pytest.fixture(scope="module")
def fitted(tmp_path_factory, demo_cache):
    root = tmp_path_factory.mktemp("run")
    main(
        [
            "fit",
            "--config",
            "configs/demo.yaml",
            *tiny_args(root, demo_cache),
            "--trainer.max_steps=3",
            "--trainer.limit_val_batches=2",
            "--trainer.val_check_interval=3",
            "--trainer.log_every_n_steps=1",
        ]
    )
    return root


def _metrics(root):
    import csv

    rows = list(csv.DictReader(open(next(root.rglob("metrics.csv")))))
    return {key for row in rows for key, value in row.items() if value}


def test_fit_logs_losses_and_miou_and_saves_checkpoints(fitted):
    assert {
        "train/loss",
        "train/loss_sup",
        "train/loss_strong",
        "train/loss_masked",
        "train/confident_fraction",
        "val/mIoU",
        "val/IoU_digit_7",
        "val/boundary_mIoU",
        "val/boundary_IoU_digit_7",
        "val/small_object_mIoU",
    } <= _metrics(fitted)
    assert list(fitted.rglob("last.ckpt")) and list(fitted.rglob("config.yaml"))


def test_val_panels_show_image_truth_prediction_pseudo_label_and_masked_view(fitted):
    panels = sorted(fitted.rglob("panels/val_step*.png"))
    assert panels
    picture = np.asarray(Image.open(panels[-1]))
    top = int(np.flatnonzero((picture[:, 0] != 255).any(-1))[0]) + 2  # titles above, then a 2-px grey border
    assert picture.shape[1] == 5 * 130 + 2 and picture.shape[0] > top + 4 * 130  # 4 val canvases, 5 tiles each
    masked = picture[top : top + 128, 2 + 4 * 130 : 5 * 130]  # 64-px canvases shown at 128 px, 2-px gutters
    image = picture[top : top + 128, 2:130]
    assert (masked != image).any(axis=-1).mean() > 0.3  # most 8-px patches hidden (ratio 0.7)


def test_fusion_probe_scores_scales_and_fusion_rules_of_the_checkpoint(fitted):
    ckpt = next(fitted.rglob("last.ckpt"))
    command = [sys.executable, "benchmarks/fusion_probe.py", str(ckpt), "--threads", "1"]
    command += ["--scales", "0.75", "1.0", "--sets", "1.0", "0.75 1.0"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    rows = {line.split(" | ")[0].strip("| "): line for line in result.stdout.splitlines() if line.startswith("| ")}
    expected = {"scale 0.75", "scale 1", "mean of 1", "geometric of 1", "mean of 0.75 / 1", "geometric of 0.75 / 1"}
    assert expected <= set(rows), result.stdout
    cells = {name: rows[name].split(" | ")[1:] for name in expected}
    assert cells["mean of 1"] == cells["scale 1"] == cells["geometric of 1"]  # one scale: nothing to fuse
    assert all(0 <= float(cell[0]) <= 100 for cell in cells.values())

    # scales of the image: an image shrunk to 0.5 is predicted at 1 / 0.5, what scale 2 of the view gives
    probe = [sys.executable, "benchmarks/fusion_probe.py", str(ckpt), "--threads", "1", "--input-scale", "0.5"]
    tables = {}
    for reference, scale in (("image", "1.0"), ("view", "2.0")):
        args = ["--reference", reference, "--scales", scale, "--sets", scale]
        result = subprocess.run(probe + args, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr[-2000:]
        assert f"scales of the {reference}" in result.stdout
        tables[reference] = next(line for line in result.stdout.splitlines() if line.startswith("| scale "))
    assert tables["image"].split(" | ")[1:] == tables["view"].split(" | ")[1:]


@pytest.mark.parametrize("command", ["validate", "test"])
def test_validate_and_test_from_the_checkpoint(fitted, demo_cache, tmp_path, command):
    ckpt = next(fitted.rglob("last.ckpt"))
    main(
        [
            command,
            "--config",
            "configs/demo.yaml",
            *tiny_args(tmp_path, demo_cache),
            "--trainer.limit_val_batches=2",
            "--trainer.limit_test_batches=2",
            f"--ckpt_path={ckpt}",
        ]
    )
    stage = "val" if command == "validate" else "test"
    assert f"{stage}/mIoU" in _metrics(tmp_path)


def test_predict_writes_palette_masks_of_the_input_size_and_never_overwrites(fitted, demo_cache, tmp_path):
    images = tmp_path / "photos"
    images.mkdir()
    for index, size in enumerate([(40, 30), (64, 64)]):
        Image.fromarray(np.random.default_rng(index).integers(0, 255, (*size, 3), dtype=np.uint8)).save(
            images / f"p{index}.jpg"
        )
    out = tmp_path / "out"
    args = [
        "predict",
        "--config",
        "configs/demo.yaml",
        *tiny_args(tmp_path / "logs", demo_cache),
        f"--data.predict={images}",
        f"--prediction.output_dir={out}",
        "--prediction.overlay=true",
        f"--ckpt_path={next(fitted.rglob('last.ckpt'))}",
    ]
    main(args)
    mask = Image.open(out / "p0.png")
    assert mask.mode == "P" and mask.size == (30, 40)
    assert np.asarray(mask).max() < 11
    assert (out / "p1_overlay.jpg").is_file()
    before = (out / "p0.png").read_bytes()
    (out / "p0.png").write_bytes(b"user data")
    with pytest.raises(FileExistsError, match="p0.png exists"):
        main(args)
    assert (out / "p0.png").read_bytes() == b"user data"
    assert before


def test_help_lists_the_subcommands():
    result = subprocess.run(
        [sys.executable, "-m", "maskmatch_pl.cli", "--help"], capture_output=True, text=True, check=True
    )
    for command in ("fit", "validate", "test", "predict"):
        assert command in result.stdout


@pytest.mark.parametrize("config", CONFIGS)
def test_print_config_shows_every_method_knob(config):
    result = subprocess.run(
        [sys.executable, "-m", "maskmatch_pl.cli", "fit", "--config", config, "--print_config"],
        capture_output=True,
        text=True,
        check=True,
    )
    printed = yaml.safe_load(result.stdout)["model"]
    for group, knob in (
        ("weights", "strong"),
        ("pseudo_labels", "scales"),
        ("pseudo_labels", "threshold"),
        ("pseudo_labels", "teacher"),
        ("pseudo_labels", "ema_momentum"),
        ("views", "cutmix_prob"),
        ("views", "student_forward"),
        ("evaluation", "mode"),
        ("experimental", "masked_norm"),
    ):
        assert knob in printed[group], (group, knob)
    if printed["masking"] is not None:  # null: the FixMatch and supervised configs
        assert {"weight", "ratio", "patch_size", "space"} <= set(printed["masking"])


def test_default_root_dir_decides_where_logs_config_and_checkpoints_go(tmp_path, demo_cache, monkeypatch):
    monkeypatch.chdir(tmp_path)  # nothing may land in the working directory either
    root = tmp_path / "elsewhere"
    args = [*tiny_model_args(), f"--data.cache_dir={demo_cache}", "--data.num_workers=0", "--data.batch_size=2"]
    config = str(Path(__file__).resolve().parent.parent / "configs" / "demo_fixmatch.yaml")
    main(
        [
            "fit",
            "--config",
            config,
            *args,
            f"--trainer.default_root_dir={root}",
            "--trainer.max_steps=2",
            "--trainer.val_check_interval=2",
            "--trainer.limit_val_batches=1",
            "--trainer.enable_progress_bar=false",
        ]
    )
    version = root / "lightning_logs" / "version_0"
    assert (version / "checkpoints" / "last.ckpt").is_file() and (version / "config.yaml").is_file()
    assert list(version.glob("events.out.tfevents.*"))  # TensorBoard scalars and panels
    assert sorted(p.name for p in tmp_path.iterdir()) == ["elsewhere"]


def test_evaluation_flags_win_over_the_checkpoint_and_another_network_is_refused(fitted, demo_cache, tmp_path, caplog):
    import logging

    ckpt = next(fitted.rglob("last.ckpt"))
    args = ["validate", "--config", "configs/demo.yaml", *tiny_args(tmp_path, demo_cache)]
    with caplog.at_level(logging.INFO):
        main(
            [
                *args,
                "--trainer.limit_val_batches=1",
                "--model.evaluation.mode=sliding_window",
                "--model.evaluation.crop_size=32",
                "--model.evaluation.flip=true",
                f"--ckpt_path={ckpt}",
            ]
        )
    assert "evaluation: eval_mode=sliding_window, crop 32, scales [1.0], flip True" in caplog.text
    assert "from the command line and config: evaluation.mode=sliding_window" in caplog.text
    other = [arg for arg in args if not arg.startswith("--model.network.encoder_name")]
    with pytest.raises(ValueError, match=r"another network than the config \(network.encoder_name: checkpoint"):
        main([*other, "--model.network.encoder_name=tu-mobilenetv3_small_075", f"--ckpt_path={ckpt}"])
    names = "[" + ", ".join(f"c{i}" for i in range(12)) + "]"
    with pytest.raises(ValueError, match=r"num_classes: checkpoint 11 vs this model 12"):
        main([*args, "--data.num_classes=12", f"--data.class_names={names}", f"--ckpt_path={ckpt}"])


# ---------------------------------------------------------------- help, options and run folders
@pytest.fixture(scope="module")
def fit_help():
    result = subprocess.run(
        [sys.executable, "-m", "maskmatch_pl.cli", "fit", "--help"],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "COLUMNS": "80"},
    )
    return result.stdout


def _option_help(help_text, prefix):
    """``{option: its help text}`` of the options ``--<prefix>.<knob>`` in ``--help``'s output."""
    entries, option = {}, None
    for line in help_text.splitlines():
        match = re.match(rf"  (--{prefix}\.[\w.]+)(?: \S+)*?(?:  +(.*))?$", line)
        if match:
            option = match.group(1)
            entries[option] = match.group(2) or ""
        elif option and line.startswith(" " * 24):
            entries[option] += " " + line.strip()
        else:
            option = None
    return {option: text.strip() for option, text in entries.items()}


def test_fit_help_explains_every_knob_and_lists_no_module_classes(fit_help):
    assert "torch.nn.Conv2d" not in fit_help and "known subclasses: torch.nn" not in fit_help
    assert len(fit_help.splitlines()) <= 400  # one line per knob
    assert len(inspect.signature(MaskMatchModule.__init__).parameters) - 1 <= 12  # a few groups, not 48 knobs
    groups = {"network": Network, "pseudo_labels": PseudoLabeling, "weights": Weights, "views": Views}
    groups |= {"optimization": Optimization, "evaluation": Evaluation, "experimental": Experimental}
    groups["sup_loss"] = SupervisedLoss
    model_knobs = {f"--model.{group}.{field.name}" for group, cls in groups.items() for field in fields(cls)}
    model_knobs |= {"--model.masking", "--model.model"}  # masking: a group or null
    data_knobs = {f"--data.{name}" for name in inspect.signature(SemiSupervisedDataModule.__init__).parameters}
    for prefix, knobs in (("model", model_knobs), ("data", data_knobs - {"--data.self", "--data.strong_views"})):
        entries = _option_help(fit_help, prefix)
        assert knobs <= set(entries), (prefix, sorted(knobs - set(entries)))
        lacking = [option for option in knobs & set(entries) if entries[option].startswith(("(type", "(required"))]
        assert not lacking, f"no help text: {lacking}"


def test_lightning_optimizer_options_are_refused(fit_help, capsys):
    assert "--optimizer" not in fit_help and "--lr_scheduler" not in fit_help
    for option in (["--optimizer", "Adam"], ["--lr_scheduler=StepLR"]):
        with pytest.raises(SystemExit) as exit_info:
            main(["fit", "--config", "configs/demo.yaml", *option, "--print_config"])
        assert exit_info.value.code != 0
        assert "is not an option: the optimiser and its poly LR schedule are the model's" in capsys.readouterr().err


# a one-layer network (quick): any nn.Module by class_path
CONV_NETWORK = "{class_path: torch.nn.Conv2d, init_args: {in_channels: 3, out_channels: 11, kernel_size: 1}}"


def test_any_network_by_class_path(demo_cache, tmp_path):
    cli = MaskMatchCLI(
        MaskMatchModule,
        SemiSupervisedDataModule,
        args=[
            "fit",
            "--config",
            "configs/demo.yaml",
            *tiny_args(tmp_path, demo_cache, ["--trainer.logger=false"]),
            f"--model.model={CONV_NETWORK}",
            "--trainer.max_steps=1",
            "--trainer.limit_val_batches=1",
            "--trainer.val_check_interval=1",
        ],
    )
    assert isinstance(cli.model.network.net, torch.nn.Conv2d) and cli.trainer.global_step == 1


@pytest.mark.parametrize("logger", ["default", "csv"])
def test_validate_test_and_predict_log_apart_from_the_training_runs(demo_cache, tmp_path, logger):
    args = [
        "--config",
        "configs/demo.yaml",
        *tiny_args(tmp_path, demo_cache),
        f"--model.model={CONV_NETWORK}",  # quick
        "--trainer.limit_val_batches=1",
        "--trainer.limit_test_batches=1",
    ]
    if logger == "default":  # Lightning's TensorBoard logger in <default_root_dir>/lightning_logs
        args = [arg for arg in args if not arg.startswith("--trainer.logger")]
    main(["fit", *args, "--trainer.max_steps=1", "--trainer.val_check_interval=1"])
    ckpt = tmp_path / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt"
    for command in ("validate", "test", "validate"):
        main([command, *args, f"--ckpt_path={ckpt}"])
    images = f"--data.predict={build_demo_dataset(demo_cache) / 'splits' / 'val.txt'}"
    out = f"--prediction.output_dir={tmp_path / 'predictions'}"
    main(["predict", *args, images, out, "--trainer.limit_predict_batches=1", f"--ckpt_path={ckpt}"])
    logs = tmp_path / "lightning_logs"
    assert sorted(p.name for p in logs.iterdir()) == ["predict", "test", "validate", "version_0"]
    assert sorted(p.name for p in (logs / "validate").iterdir()) == ["version_0", "version_1"]
    assert (logs / "validate" / "version_1" / "config.yaml").is_file()
    assert list((logs / "test" / "version_0").glob("metrics.csv" if logger == "csv" else "events.out.tfevents.*"))


def test_fits_without_a_logger_in_one_folder_keep_every_config_and_checkpoint(demo_cache, tmp_path):
    args = [
        "fit",
        "--config",
        "configs/demo.yaml",
        *tiny_args(tmp_path, demo_cache, ["--trainer.logger=false"]),
        f"--model.model={CONV_NETWORK}",  # quick
        "--trainer.max_steps=1",
        "--trainer.limit_val_batches=1",
        "--trainer.val_check_interval=1",
    ]
    main(args)
    first = (tmp_path / "config.yaml").read_bytes()
    main([*args, "--model.optimization.lr=0.02"])
    assert (tmp_path / "config.yaml").read_bytes() == first
    assert yaml.safe_load((tmp_path / "config_1.yaml").read_text())["model"]["optimization"]["lr"] == 0.02
    assert (tmp_path / "checkpoints" / "last.ckpt").is_file() and (tmp_path / "checkpoints_1" / "last.ckpt").is_file()
    main(["validate", *args[1:], f"--ckpt_path={tmp_path / 'checkpoints' / 'last.ckpt'}"])  # its config apart
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "checkpoints",
        "checkpoints_1",
        "config.yaml",
        "config_1.yaml",
        "validate",
    ]
    assert (tmp_path / "validate" / "config.yaml").is_file()


def test_a_checkpoint_with_flat_knobs_validates_through_the_cli(fitted, demo_cache, tmp_path, caplog, monkeypatch):
    """``--ckpt_path`` of a checkpoint written before the knobs were grouped: its flat
    hyperparameters are read as groups in memory: no converted copy is written, the user's file is not touched."""
    import logging
    import tempfile

    from maskmatch_pl.compat import FLAT_KNOBS

    checkpoint = torch.load(next(fitted.rglob("last.ckpt")), weights_only=False)
    grouped = checkpoint["hyper_parameters"]
    flat = {"num_classes": grouped["num_classes"], "class_names": grouped["class_names"]}
    for key, (group, name) in FLAT_KNOBS.items():
        flat[key] = grouped[group][name] if grouped[group] is not None else 0.0
    checkpoint["hyper_parameters"] = flat
    old = tmp_path / "flat.ckpt"
    torch.save(checkpoint, old)
    before = old.read_bytes()
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    args = ["validate", "--config", "configs/demo.yaml", *tiny_args(tmp_path, demo_cache)]
    with caplog.at_level(logging.INFO):
        main([*args, "--trainer.limit_val_batches=1", f"--ckpt_path={old}"])
    assert "flat knobs of an earlier version, read as groups" in caplog.text
    assert old.read_bytes() == before
    assert not list(scratch.iterdir())


@pytest.mark.parametrize("config", sorted(str(p) for p in Path("configs").glob("*.yaml")))
def test_every_config_parses_with_its_shared_group_files(config, capsys):
    """Configs name shared files for the repeated groups (``network: demo/network.yaml``): the file's
    knobs land in the nested group, and a knob given after it still wins."""
    text = yaml.safe_load(Path(config).read_text())
    shared = {group: path for group, path in text["model"].items() if isinstance(path, str)}
    with pytest.raises(SystemExit):
        main(["fit", "--config", config, "--model.optimization.lr=0.123", "--print_config"])
    printed = yaml.safe_load(capsys.readouterr().out)["model"]
    for group, path in shared.items():
        knobs = yaml.safe_load((Path(config).parent / path).read_text())
        assert {k: printed[group][k] for k in knobs if (group, k) != ("optimization", "lr")} == {
            k: v for k, v in knobs.items() if (group, k) != ("optimization", "lr")
        }
    assert printed["optimization"]["lr"] == 0.123


@pytest.mark.parametrize("config", sorted(str(p) for p in Path("configs").glob("*.yaml")))
def test_every_config_keeps_the_trainer_and_data_files_it_names(config, capsys):
    """A top-level ``trainer: file`` / ``data: file`` is read whole: a dotted key after it
    (``trainer.max_epochs: 60``) once replaced the file's whole section with defaults (no DDP, no
    checkpoints, ``dataset: custom``)."""
    text = yaml.safe_load(Path(config).read_text())
    with pytest.raises(SystemExit):
        main(["fit", "--config", config, "--print_config"])
    printed = yaml.safe_load(capsys.readouterr().out)
    for section in ("trainer", "data"):
        assert not [key for key in text if key.startswith(f"{section}.")], f"{config}: dotted {section} keys"
        if isinstance(text.get(section), str):
            knobs = yaml.safe_load((Path(config).parent / text[section]).read_text())
            for key, value in knobs.items():
                if key == "callbacks":
                    assert [c["class_path"] for c in printed[section][key]] == [c["class_path"] for c in value]
                elif isinstance(value, list):
                    assert list(printed[section][key]) == value, (section, key)
                else:
                    assert printed[section][key] == value, (section, key)


def test_shared_group_files_are_each_used_by_several_configs():
    uses: dict[str, int] = {}
    for config in Path("configs").glob("*.yaml"):
        for value in yaml.safe_load(config.read_text())["model"].values():
            if isinstance(value, str):
                uses[value] = uses.get(value, 0) + 1
    group_files = {str(p.relative_to("configs")) for p in Path("configs").glob("*/*.yaml")}
    sections = {
        yaml.safe_load(c.read_text()).get(key) for c in Path("configs").glob("*.yaml") for key in ("trainer", "data")
    }
    group_files -= sections
    assert group_files == set(uses) and min(uses.values()) >= 2, uses
