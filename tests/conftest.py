import os

import pytest
import yaml

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing may download weights: fail fast if something tries
# the CLI raises user errors with their traceback, so that tests assert the exception and its message;
# test_first_contact.py runs the CLI without it, as a user meets it (message, exit status 2)
os.environ["MASKMATCH_PL_TRACEBACK"] = "1"

TINY_MODEL = {
    "arch": "Unet",
    "encoder_name": "tu-mobilenetv3_small_050",
    "encoder_weights": None,
    "model_kwargs": {"encoder_depth": 5, "decoder_channels": [16, 16, 8, 8, 8]},  # every parameter used (DDP)
}


def tiny_model_args():
    """CLI arguments that select the tiny test network."""
    return [
        f"--model.network.{key}={yaml.safe_dump(value, default_flow_style=True).strip().removesuffix('...').strip()}"
        for key, value in TINY_MODEL.items()
    ]


@pytest.fixture(scope="session")
def demo_cache(tmp_path_factory):
    """The demo dataset, generated once per test session into a temporary cache."""
    from maskmatch_pl import build_demo_dataset

    cache = tmp_path_factory.mktemp("cache")
    build_demo_dataset(cache)
    return cache


@pytest.fixture
def tiny_module_kwargs():
    return dict(TINY_MODEL, num_classes=11, pseudo_label_scales=(0.75, 1.0), mask_patch_size=8)


def flat_module(**knobs):
    """A MaskMatchModule from knobs in the flat spelling (``mask_ratio=0.5``), converted into the groups
    by ``maskmatch_pl.compat``, the converter old checkpoints are read with: the tests that are about
    one knob say it in one word."""
    from maskmatch_pl.compat import module_from_flat_knobs

    return module_from_flat_knobs(**knobs)
