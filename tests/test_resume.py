"""Resume from any checkpoint equals the unbroken run step for step: checkpoints taken every few
training steps with an EMA teacher, a network with dropout, and a fit preempted by SIGTERM."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest

from maskmatch_pl import SemiSupervisedDataModule
from maskmatch_pl.cli import main
from maskmatch_pl.preemption import PreemptionCheckpoint

from .conftest import TINY_MODEL, flat_module, tiny_model_args
from .recorders import RecordLosses

pytestmark = pytest.mark.filterwarnings("ignore")

STEPS = 6
SETUPS = {
    # conf_threshold 0: every pixel's pseudo-label counts, so a teacher one update behind shows in the loss
    "ema": ["--model.pseudo_labels.teacher=ema", "--model.pseudo_labels.threshold=0"],
    # the FPN's decoder dropout (the shipped demo network has one) draws random numbers every step
    "dropout": [
        "--model.network.arch=FPN",
        "--model.network.model_kwargs={decoder_pyramid_channels: 32, decoder_segmentation_channels: 32, "
        "decoder_dropout: 0.5}",
        "--model.pseudo_labels.threshold=0",
    ],
}


class SigtermAt(RecordLosses):
    """Records the losses as :class:`RecordLosses` and sends its own process SIGTERM during
    optimiser step ``at`` (1-based), as a scheduler ending the job would."""

    def __init__(self, path: str, at: int) -> None:
        super().__init__(path, stop_at=-1)
        self.at = at

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step + 1 == self.at:
            os.kill(os.getpid(), signal.SIGTERM)

    def on_exception(self, trainer, pl_module, exception):
        self.on_train_end(trainer, pl_module)


def fit_args(root: Path, cache: Path, setup: str, *extra: str) -> list[str]:
    """A tiny ``fit`` on the demo data that saves a checkpoint every 2 training steps."""
    return [
        "fit",
        "--config",
        "configs/demo.yaml",
        *tiny_model_args(),
        *SETUPS[setup],
        f"--data.cache_dir={cache}",
        "--data.num_workers=0",
        "--data.batch_size=2",
        "--data.crop_size=32",
        f"--trainer.max_steps={STEPS}",
        "--trainer.limit_val_batches=0",
        "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false",
        "--trainer.log_every_n_steps=1",
        "--trainer.accelerator=cpu",
        f"--trainer.default_root_dir={root}",
        "--trainer.logger=lightning.pytorch.loggers.CSVLogger",
        f"--trainer.logger.save_dir={root}",
        "--trainer.callbacks+=lightning.pytorch.callbacks.ModelCheckpoint",
        "--trainer.callbacks.every_n_train_steps=2",
        "--trainer.callbacks.save_top_k=-1",
        "--trainer.callbacks.filename=step{step}",
        "--trainer.callbacks.auto_insert_metric_name=false",
        *extra,
    ]


def losses_of(root: Path, cache: Path, setup: str, *extra: str) -> dict[int, float]:
    """``{global step: loss}`` of a fit run in this process."""
    record = root / "losses"
    recorder = ["--trainer.callbacks+=tests.recorders.RecordLosses", f"--trainer.callbacks.path={record}"]
    main(fit_args(root, cache, setup, *recorder, *extra))
    return read(record)


def read(record: Path) -> dict[int, float]:
    return {int(step): loss for step, loss in json.loads(record.with_suffix(".rank0.json").read_text()).items()}


def own_trainer(root: Path, steps: int, callbacks: list, **kwargs) -> L.Trainer:
    """A quiet CPU Trainer of one's own (no logger, checkpoints or validation) for ``steps`` steps."""
    return L.Trainer(
        max_steps=steps,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        limit_val_batches=0,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=root,
        callbacks=callbacks,
        **kwargs,
    )


@pytest.fixture(scope="module")
def straight(tmp_path_factory, demo_cache):
    """The unbroken runs, one per setup, and the folders that hold their checkpoints."""
    runs = {}
    for setup in SETUPS:
        root = tmp_path_factory.mktemp(f"straight_{setup}")
        runs[setup] = losses_of(root, demo_cache, setup), root
    return runs


@pytest.mark.parametrize("setup", list(SETUPS))
def test_resume_from_step_checkpoints_matches_the_unbroken_run(setup, straight, tmp_path, demo_cache):
    losses, root = straight[setup]
    assert sorted(losses) == list(range(1, STEPS + 1))
    for step in (2, 4) if setup == "ema" else (2,):
        ckpt = next(root.rglob(f"step{step}.ckpt"))
        resumed = losses_of(tmp_path / f"from{step}", demo_cache, setup, f"--ckpt_path={ckpt}")
        assert resumed == {s: losses[s] for s in range(step + 1, STEPS + 1)}, f"resumed from step {step}"


def test_sigterm_saves_exits_non_zero_and_resumes_exactly(straight, tmp_path, demo_cache):
    losses, _ = straight["dropout"]
    root, record = tmp_path / "preempted", tmp_path / "preempted" / "losses"
    at = ["--trainer.callbacks+=tests.test_resume.SigtermAt", f"--trainer.callbacks.path={record}"]
    args = fit_args(root, demo_cache, "dropout", *at, "--trainer.callbacks.at=3")
    env = dict(os.environ, PYTHONPATH=os.getcwd())
    result = subprocess.run(
        [sys.executable, "-m", "maskmatch_pl.cli", *args], env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 143, result.stderr[-3000:]
    ckpt = next(root.rglob("preempted.ckpt"))
    assert str(ckpt) in result.stdout + result.stderr
    assert read(record) == {s: losses[s] for s in (1, 2, 3)}  # it stopped after the step that got the signal
    resumed = losses_of(tmp_path / "resumed", demo_cache, "dropout", f"--ckpt_path={ckpt}")
    assert resumed == {s: losses[s] for s in range(4, STEPS + 1)}


def test_sigterm_in_a_trainer_of_ones_own_waits_for_the_accumulated_step(tmp_path, demo_cache):
    L.seed_everything(0)
    module = flat_module(**TINY_MODEL, num_classes=11, mask_patch_size=8)
    data = SemiSupervisedDataModule(
        dataset="demo", split="1_16", cache_dir=str(demo_cache), crop_size=32, batch_size=2, num_workers=0
    )
    trainer = own_trainer(
        tmp_path, STEPS, [PreemptionCheckpoint(), SigtermAt(str(tmp_path / "losses"), at=2)], accumulate_grad_batches=2
    )
    with pytest.raises(SystemExit) as stopped:
        trainer.fit(module, data)
    # the signal came in step 2's first micro-batch: the fit stops once that step is done
    assert stopped.value.code == 143 and trainer.global_step == 2
    assert (tmp_path / "checkpoints" / "preempted.ckpt").is_file()  # <trainer.log_dir>/checkpoints


def test_a_checkpoint_with_the_earlier_lambda_schedule_resumes_exactly(straight, tmp_path, demo_cache):
    """Checkpoints written before the schedule was torch's LinearLR x PolynomialLR hold LambdaLR's state
    (only a step count): resuming one converts it, and the losses equal the unbroken run's."""
    import torch

    from maskmatch_pl.optim import poly_factor

    losses, root = straight["ema"]
    checkpoint = torch.load(next(root.rglob("step2.ckpt")), map_location="cpu", weights_only=False)
    optimization = checkpoint["hyper_parameters"]["optimization"]
    power, warmup = optimization["poly_power"], optimization["warmup_steps"]
    groups = checkpoint["optimizer_states"][0]["param_groups"]
    stand_in = torch.optim.SGD(
        [{"params": [torch.zeros(1, requires_grad=True)], "lr": group["initial_lr"]} for group in groups], lr=1.0
    )
    earlier = torch.optim.lr_scheduler.LambdaLR(stand_in, lambda step: poly_factor(step, STEPS, power, warmup))
    for _ in range(2):  # the earlier schedule, at the checkpoint's step
        stand_in.step()
        earlier.step()
    assert [group["lr"] for group in stand_in.param_groups] == pytest.approx([group["lr"] for group in groups])
    checkpoint["lr_schedulers"] = [earlier.state_dict()]
    assert "lr_lambdas" in checkpoint["lr_schedulers"][0]  # LambdaLR's state, as earlier versions saved it
    old = tmp_path / "lambda_schedule.ckpt"
    torch.save(checkpoint, old)
    resumed = losses_of(tmp_path / "from_old", demo_cache, "ema", f"--ckpt_path={old}")
    assert resumed == {s: losses[s] for s in range(3, STEPS + 1)}


def test_a_resume_with_more_steps_follows_the_longer_schedule(straight, tmp_path, demo_cache):
    """Resumed with a larger max_steps, the poly decay is rebuilt over the new length (as the
    earlier LambdaLR did), instead of ending at the checkpoint's length."""
    import torch

    from maskmatch_pl.optim import poly_factor

    _, root = straight["ema"]
    ckpt = next(root.rglob("step2.ckpt"))
    checkpoint = torch.load(ckpt, map_location="cpu", weights_only=False)
    optimization = checkpoint["hyper_parameters"]["optimization"]
    base = [group["initial_lr"] for group in checkpoint["optimizer_states"][0]["param_groups"]]
    record = tmp_path / "lrs"
    extra = [
        f"--ckpt_path={ckpt}",
        "--trainer.callbacks+=tests.recorders.RecordLR",
        f"--trainer.callbacks.path={record}",
    ]
    main(fit_args(tmp_path / "longer", demo_cache, "ema", *extra, f"--trainer.max_steps={STEPS + 4}"))
    lrs = {int(k): v for k, v in json.loads(record.with_suffix(".rank0.json").read_text()).items()}
    assert sorted(lrs) == list(range(2, STEPS + 4))
    for step, seen in lrs.items():
        factor = poly_factor(step, STEPS + 4, optimization["poly_power"], optimization["warmup_steps"])
        assert seen == pytest.approx([lr * factor for lr in base], rel=1e-9), f"step {step}"


def test_a_fresh_fit_of_a_loaded_checkpoint_starts_its_schedule_at_step_0(straight, tmp_path, demo_cache):
    """load_from_checkpoint (fine-tuning from trained weights) is no resume: the next fit's schedule
    starts at its own step 0."""

    from maskmatch_pl import MaskMatchModule
    from maskmatch_pl.optim import poly_factor

    from .recorders import RecordLR

    _, root = straight["ema"]
    module = MaskMatchModule.load_from_checkpoint(next(root.rglob("step4.ckpt")))
    data = SemiSupervisedDataModule(
        dataset="demo", split="1_16", cache_dir=str(demo_cache), crop_size=32, batch_size=2, num_workers=0
    )
    record = tmp_path / "lrs"
    trainer = own_trainer(tmp_path, 3, [RecordLR(str(record))])
    trainer.fit(module, data)
    lrs = {int(k): v for k, v in json.loads(record.with_suffix(".rank0.json").read_text()).items()}
    optimization = module.optimization
    base = optimization.lr
    for step in range(3):
        factor = poly_factor(step, 3, optimization.poly_power, optimization.warmup_steps)
        assert lrs[step][0] == pytest.approx(base * factor, rel=1e-9), f"step {step}"
