"""The example of MaskMatch in someone's own LightningModule runs and learns."""

import importlib.util
from pathlib import Path

import torch


def load_example():
    path = Path(__file__).resolve().parent.parent / "examples" / "own_lightning_module.py"
    spec = importlib.util.spec_from_file_location("own_lightning_module", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_own_lightning_module_example_trains_with_the_public_parts():
    example = load_example()
    untrained = example.MySegmenter()
    batch = next(iter(example.DataLoader(example.Shapes(16, True, seed=9), batch_size=16)))
    trained = example.main(max_steps=30)
    with torch.no_grad():
        before = torch.nn.functional.cross_entropy(untrained.net.eval()(batch["image"]), batch["mask"])
        after = torch.nn.functional.cross_entropy(trained.net.eval()(batch["image"]), batch["mask"])
    assert after < before * 0.7
    teacher, student = dict(trained.teacher.named_parameters()), dict(trained.net.named_parameters())
    assert not torch.equal(teacher["ema.0.weight"], untrained.teacher.get_parameter("ema.0.weight"))  # EMA moved
    assert not torch.equal(teacher["ema.0.weight"], student["0.weight"])
