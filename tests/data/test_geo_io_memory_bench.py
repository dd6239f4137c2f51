"""bench/geo_io_memory.py at a small size: both phases run, the JSON reports what bench/README.md quotes."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("rasterio")

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "geo_io_memory.py"


def test_small_run_reports_peak_memory_of_each_phase(tmp_path):
    out = tmp_path / "memory.json"
    done = subprocess.run([sys.executable, str(SCRIPT), "--hr-size", "256", "--bands", "8", "--tile", "32",
                           "--network-tile", "32", "--tmpdir", str(tmp_path), "--out", str(out)],
                          cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result == json.loads(done.stdout)
    assert result["rasters"]["fused"]["shape"] == "8 x 256 x 256"
    assert result["rasters"]["lr"]["shape"] == "8 x 64 x 64"
    assert result["stream"]["tiles"] == 4
    for phase in ("stream", "csakd_fuse"):
        report = result[phase]
        assert 0 < report["baseline_rss_mib"] <= report["peak_rss_mib"]
        assert report["peak_rss_above_baseline_mib"] == pytest.approx(
            report["peak_rss_mib"] - report["baseline_rss_mib"], abs=0.11)
    assert result["env"]["torch"] and result["env"]["date"].startswith("20")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["memory.json"]  # the temporary rasters are gone
