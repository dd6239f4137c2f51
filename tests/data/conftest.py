"""Where the real AVIRIS test scenes live: the shared data folder beside the checkout, or CSAKD_REAL_DATA.
Tests that need them skip with a reason when they are absent (they are never copied into the repository)."""
import os
from pathlib import Path

import pytest

REAL_DATA = Path(os.environ.get("CSAKD_REAL_DATA", Path(__file__).resolve().parents[3] / "shared" / "data"))


@pytest.fixture
def real_scene():
    """real_scene(file name) -> its path, or skips the test when the scene is not there."""
    def path(name: str) -> Path:
        found = REAL_DATA / name
        if not found.is_file():
            pytest.skip(f"real AVIRIS scene {name} is absent from {REAL_DATA} (set CSAKD_REAL_DATA to its folder)")
        return found
    return path
