"""The experiments' own tests (``pytest experiments``; not in CI, whose tests are ``tests/``) share the
product tests' fixtures."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from tests.conftest import demo_cache, tiny_model_args  # noqa: E402, F401
