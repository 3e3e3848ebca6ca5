"""The speed benchmarks measure what they say: the plain-PyTorch FixMatch loop computes what our
step computes (so ``ours / plain`` in ``benchmarks/reference_loop.py`` compares like with like),
and the generated VOC-like data is a valid multi-class data set."""

import copy
import importlib
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from maskmatch_pl import SemiSupervisedDataModule
from maskmatch_pl.data.datasets import verify_samples
from maskmatch_pl.optim import build_optimizer

from .conftest import TINY_MODEL, flat_module
from .test_module import make_batch

sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
reference_loop = importlib.import_module("reference_loop")
loader_throughput = importlib.import_module("loader_throughput")
cutmix_file = importlib.import_module("maskmatch_pl.cutmix")


@pytest.mark.parametrize("teacher_pass", ["joint", "eval"])
def test_plain_loop_step_equals_our_step(monkeypatch, teacher_pass):
    torch.manual_seed(0)
    module = flat_module(
        num_classes=11,
        masked_weight=0.0,
        pseudo_label_scales=[1.0],
        norm_stats="all",
        teacher_pass=teacher_pass,
        conf_threshold=0.2,  # some pixels confident, some not, with a random network
        lr=reference_loop.LR,
        lr_multi=reference_loop.LR_MULTI,
        **TINY_MODEL,
    )
    module.log = lambda *args, **kwargs: None
    monkeypatch.setattr(reference_loop, "TAU", 0.2)
    batch = make_batch(batch=3, size=64)  # not 32: the adapter pads a 1 x 1 deepest map, the plain loop does not
    batch["unlabeled"]["ignore_mask"][1, -6:] = 255
    box = torch.zeros(3, 64, 64, dtype=torch.bool)
    box[0, 4:20, 8:24] = box[2, 10:30, 0:12] = True
    monkeypatch.setattr(cutmix_file, "cutmix_boxes", lambda *args, **kwargs: box)
    plain_net = copy.deepcopy(module.network.net)

    ours = module.training_step(batch, 0)
    optimizer = build_optimizer(module.network.net, "sgd", reference_loop.LR, reference_loop.LR_MULTI)
    ours.backward()
    optimizer.step()
    plain = reference_loop.plain_fixmatch_step(
        plain_net, reference_loop.reference_optimizer(plain_net), batch, box, 0, 10, teacher_pass
    )

    assert ours.item() == pytest.approx(plain.item(), rel=1e-6)
    theirs = plain_net.state_dict()
    for name, value in module.network.net.state_dict().items():  # weights after the step and BN statistics
        torch.testing.assert_close(value, theirs[name], rtol=1e-5, atol=1e-6, msg=name)


def test_generated_voc_like_data_reads_as_a_multi_class_data_set(tmp_path):
    root = loader_throughput.write_voc_like(tmp_path, {"labeled": 6})
    data = SemiSupervisedDataModule(labeled=str(root / "labeled"), num_classes=21)
    samples = data.samples("labeled")  # verify: full decodes every pair
    values = verify_samples(data.reader, samples, decode=True, what="generated")
    assert len(samples) == 6 and 255 in values and len(values - {0, 255}) >= 3


def test_memory_format_benchmark_prints_both_layouts(tmp_path):
    """benchmarks/memory_format.py runs and prints a row per method with both layouts and their ratio."""
    script = Path(__file__).parents[1] / "benchmarks" / "memory_format.py"
    command = [sys.executable, str(script), "--repeats", "1", "--rounds", "1", "--methods", "UniMatch"]
    out = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, check=True).stdout
    rows = {line.split(" | ")[0].strip("| "): line for line in out.splitlines() if line.startswith("| ")}
    assert {"UniMatch", "no-grad forward (teacher, val)"} <= set(rows)
    assert all(line.rstrip(" |").endswith("x") for name, line in rows.items() if name != "what")
