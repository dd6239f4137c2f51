"""A user's own georeferenced scene end to end, by running the README's "Try it on a sample scene", "Train on
your own scene" and "Fuse your own scene" blocks as written: a 150-band GeoTIFF at 400-900 nm (not AVIRIS) and
Sentinel-2 bands 2, 3, 4, 8 (measured responses) through `csakd synth`, `csakd train --minutes 1`, `csakd eval`
and `csakd fuse`; then evaluation and fusion of the same pair give the same numbers."""
import re
import subprocess
from pathlib import Path

import numpy as np
import rasterio

from csakd.data.geo import open_raster

ROOT = Path(__file__).resolve().parents[2]
SECTIONS = ("Try it on a sample scene", "Train on your own scene", "Fuse your own scene")


def readme_blocks(title: str) -> list[str]:
    """The ```bash blocks of one README section."""
    text = (ROOT / "README.md").read_text()
    section = text.split(f"\n## {title}\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```bash\n(.*?)```", section, flags=re.S)


def _run(script: str, cwd: Path) -> str:
    done = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=cwd, capture_output=True, text=True,
                          timeout=900)
    assert done.returncode == 0, f"{script}\n--- stdout\n{done.stdout[-3000:]}\n--- stderr\n{done.stderr[-3000:]}"
    return done.stdout


def test_the_readme_runs_as_written_on_a_georeferenced_sentinel2_scene(tmp_path):
    outputs = {title: [_run(block, tmp_path) for block in readme_blocks(title)] for title in SECTIONS}
    assert all(outputs.values()), "each section has at least one bash block"
    train_eval = "".join(outputs["Train on your own scene"])
    assert "validation" in train_eval and "PSNR" in train_eval and "bicubic" in train_eval

    fused = tmp_path / "fused" / "fused.tif"
    with rasterio.open(fused) as product, rasterio.open(tmp_path / "msi.tif") as msi:
        assert product.count == 150 and product.shape == msi.shape
        assert product.crs == msi.crs and product.transform == msi.transform
        assert np.isfinite(product.read()).all()
    with open_raster(fused) as product, open_raster(tmp_path / "lr.tif") as lr:
        np.testing.assert_allclose(product.wavelengths, lr.wavelengths, atol=0.01)
        np.testing.assert_allclose(lr.wavelengths, np.linspace(400, 900, 150), atol=0.05)

    # Evaluation and fusion of the same pair at the same precision give the same numbers: one scaling, one
    # tiled forward.
    (item,) = sorted((tmp_path / "my-data" / "test").glob("*.npz"))
    _run("csakd eval --checkpoint my-run --data my-data --split test --figures 0 --save-predictions --out same-eval"
         " && csakd fuse --checkpoint my-run --lr-hsi {0} --lr-key lr_hsi --hr-msi {0} --msi-key hr_msi --clip none"
         " --precision fp32 --out same.npy --no-progress".format(item), tmp_path)  # eval's precision
    evaluated = np.load(tmp_path / "same-eval" / "predictions" / "student" / f"{item.stem}.npy")
    np.testing.assert_array_equal(np.load(tmp_path / "same.npy"), evaluated)
