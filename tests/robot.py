"""Shared by the robosuite test modules: skip them without the [robot] extra, except in CI's robot venv."""
import os

import pytest


def require_robosuite() -> None:
    """Call at module level before importing the robosuite tasks. Skips the module when robosuite is
    missing; with ``TORCHCFM_LOCAL_REQUIRE_ROBOT`` set (CI's robot venv) a failed import fails instead."""
    if os.environ.get("TORCHCFM_LOCAL_REQUIRE_ROBOT"):
        import robosuite  # noqa: F401
    else:
        pytest.importorskip("robosuite", reason="robosuite tasks need the [robot] extra: pip install -e '.[robot]'")
