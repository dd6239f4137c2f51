"""csakd.data.geo: georeferenced rasters written by rasterio or by RasterWriter and read back by windows; grid
alignment of an LR-HSI / HR-MSI pair and on-the-fly resampling of a misaligned HR-MSI."""
import numpy as np
import pytest
import rasterio
from affine import Affine
from rasterio.warp import transform as transform_points
from rasterio.windows import Window

from csakd.data.geo import RasterWriter, aligned_msi, check_alignment, open_raster

CRS = "EPSG:32633"
X0, Y0 = 500_000.0, 4_000_000.0
LR_PIXEL, SCALE = 40.0, 4
LR_H, LR_W, LR_BANDS = 12, 10, 150
WAVELENGTHS = np.linspace(400.0, 900.0, LR_BANDS)
FWHM = np.full(LR_BANDS, 3.5)


def from_origin(x, y, xsize, ysize):
    return Affine(xsize, 0.0, x, 0.0, -ysize, y)


def centres(t, cols, rows):
    """Map coordinates of pixel centres (cols, rows: 0-based indices)."""
    return t.c + (cols + 0.5) * t.a + (rows + 0.5) * t.b, t.f + (cols + 0.5) * t.d + (rows + 0.5) * t.e


def write(path, data, crs=CRS, transform=None, nodata=None, **extra):
    """An input raster written by rasterio itself, independently of RasterWriter."""
    profile = dict(driver="GTiff", count=data.shape[0], height=data.shape[1], width=data.shape[2],
                   dtype=data.dtype.name, crs=crs, transform=transform, nodata=nodata, **extra)
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
    return path


def lr_cube():
    return np.random.default_rng(0).random((LR_BANDS, LR_H, LR_W), dtype=np.float32)


def msi_cube(h=LR_H * SCALE, w=LR_W * SCALE):
    return np.random.default_rng(1).random((4, h, w), dtype=np.float32)


LR_T = from_origin(X0, Y0, LR_PIXEL, LR_PIXEL)
HR_PIXEL = LR_PIXEL / SCALE
HR_T = from_origin(X0, Y0, HR_PIXEL, HR_PIXEL)


@pytest.fixture
def pair(tmp_path):
    lr = write(tmp_path / "lr.tif", lr_cube(), transform=LR_T)
    msi = write(tmp_path / "msi.tif", msi_cube(), transform=HR_T)
    with open_raster(lr, "lr_hsi") as a, open_raster(msi, "hr_msi") as b:
        yield a, b


@pytest.mark.parametrize("fmt,name", [("GTiff", "out.tif"), ("COG", "out.tif"), ("ENVI", "out.img")])
def test_round_trip_in_windows(tmp_path, fmt, name):
    data = lr_cube()
    data[:, 0, 0] = -9999.0
    path = tmp_path / name
    with RasterWriter(path, LR_BANDS, LR_H, LR_W, CRS, LR_T, nodata=-9999.0, wavelengths=WAVELENGTHS, fwhm=FWHM,
                      format=fmt, units="reflectance") as out:
        out.write(data[:, :5], (0, 0, 5, LR_W))
        out.write(data[:, 5:], Window(0, 5, LR_W, LR_H - 5))
    expected = {"out.tif"} if fmt != "ENVI" else {"out.img", "out.hdr"}
    assert {p.name for p in tmp_path.iterdir()} == expected  # no temporary or .aux.xml files left
    with open_raster(path if fmt != "ENVI" else tmp_path / "out.hdr", "lr_hsi") as r:
        assert (r.bands, r.height, r.width, r.dtype) == (LR_BANDS, LR_H, LR_W, "float32")
        np.testing.assert_array_equal(r.read(), data)
        assert r.crs == rasterio.crs.CRS.from_string(CRS)
        assert r.transform.almost_equals(LR_T, precision=1e-9)
        assert r.nodata == -9999.0
        np.testing.assert_allclose(r.wavelengths, WAVELENGTHS, rtol=1e-12)
        np.testing.assert_allclose(r.fwhm, FWHM, rtol=1e-12)
        assert r.units == ("reflectance" if fmt != "ENVI" else None)  # ENVI headers have no field for them
    with rasterio.open(path) as src:
        if fmt == "ENVI":
            header = (tmp_path / "out.hdr").read_text()
            assert "wavelength units = Nanometers" in header and "map info = {UTM" in header
            assert ".tmp" not in header and "out.img" in header
        else:
            assert src.profile["tiled"] and src.block_shapes[0] == (256, 256)
            assert src.compression.name == "deflate"
            assert src.descriptions[0] == "400 nm" and src.tags()["wavelengths_nm"].startswith("400.0,")
            layout = src.tags(ns="IMAGE_STRUCTURE")
            assert layout.get("LAYOUT") == ("COG" if fmt == "COG" else None)
            if fmt == "GTiff":
                assert layout["INTERLEAVE"] == "BAND"


def test_envi_output_reads_with_read_cube(tmp_path):
    from csakd.data import read_cube

    data = lr_cube()
    with RasterWriter(tmp_path / "out.img", LR_BANDS, LR_H, LR_W, CRS, LR_T, wavelengths=WAVELENGTHS,
                      format="ENVI") as out:
        out.write(data)
    cube = read_cube(tmp_path / "out.hdr")
    np.testing.assert_array_equal(cube.data, data.transpose(1, 2, 0))
    np.testing.assert_allclose(cube.wavelengths, WAVELENGTHS)


def test_envi_header_in_micrometres(tmp_path):
    data = lr_cube()[:3]
    data.tofile(tmp_path / "scene.bsq")
    (tmp_path / "scene.hdr").write_text(
        "ENVI\nsamples = 10\nlines = 12\nbands = 3\nheader offset = 0\nfile type = ENVI Standard\n"
        "data type = 4\ninterleave = bsq\nbyte order = 0\nwavelength units = Micrometers\n"
        "wavelength = {0.45, 0.55, 0.65}\nfwhm = {0.01, 0.01, 0.02}\n")
    with open_raster(tmp_path / "scene.hdr") as r:
        np.testing.assert_allclose(r.wavelengths, [450, 550, 650])
        np.testing.assert_allclose(r.fwhm, [10, 10, 20])
        assert not r.georeferenced
        np.testing.assert_array_equal(r.read(), data)


def test_windowed_read_is_the_slice_of_a_full_read(pair):
    lr, msi = pair
    full = msi.read()
    np.testing.assert_array_equal(msi.read((5, 7, 20, 13)), full[:, 5:25, 7:20])
    np.testing.assert_array_equal(msi.read(Window(7, 5, 13, 20)), full[:, 5:25, 7:20])
    assert lr.read((0, 0, 1, 1)).dtype == np.float32
    assert lr.wavelengths is None and lr.fwhm is None and lr.units is None
    with pytest.raises(ValueError, match=r"^window: expected a non-empty window inside the 12 x 10 raster"):
        lr.read((10, 0, 4, 4))


@pytest.mark.parametrize("fmt,name", [("GTiff", "out.tif"), ("COG", "out.tif"), ("ENVI", "out.img")])
def test_exception_inside_the_writer_leaves_nothing(tmp_path, fmt, name):
    with pytest.raises(RuntimeError, match="network failed"):
        with RasterWriter(tmp_path / name, 4, 8, 8, CRS, HR_T, format=fmt) as out:
            out.write(np.ones((4, 8, 8)), (0, 0, 8, 8))
            raise RuntimeError("network failed")
    assert list(tmp_path.iterdir()) == []


def test_failed_rewrite_keeps_the_previous_output(tmp_path):
    (tmp_path / "out.tif").write_bytes(b"previous result")
    with pytest.raises(RuntimeError):
        with RasterWriter(tmp_path / "out.tif", 4, 8, 8, CRS, HR_T) as out:
            out.write(np.ones((4, 8, 8)))
            raise RuntimeError
    assert [p.name for p in tmp_path.iterdir()] == ["out.tif"]
    assert (tmp_path / "out.tif").read_bytes() == b"previous result"


def test_writer_checks_its_arguments(tmp_path):
    with pytest.raises(ValueError, match=r"^format: expected one of GTiff, COG, ENVI, got 'png'"):
        RasterWriter(tmp_path / "a.png", 4, 8, 8, CRS, HR_T, format="png")
    with pytest.raises(ValueError, match=r"^wavelengths: expected 4 positive finite values in nm .* got 3"):
        RasterWriter(tmp_path / "a.tif", 4, 8, 8, CRS, HR_T, wavelengths=[1, 2, 3])
    with pytest.raises(ValueError, match=r"^transform: expected an affine.Affine"):
        RasterWriter(tmp_path / "a.tif", 4, 8, 8, CRS, (0, 1, 0, 0, 0, -1))
    with pytest.raises(ValueError, match=r"^nodata: expected an integer in 0..255"):
        RasterWriter(tmp_path / "a.tif", 4, 8, 8, CRS, HR_T, nodata=-1, dtype="uint8")
    with pytest.raises(FileNotFoundError, match=r"^out: the folder .*missing does not exist"):
        RasterWriter(tmp_path / "missing" / "a.tif", 4, 8, 8, CRS, HR_T)
    with RasterWriter(tmp_path / "a.tif", 4, 8, 8, CRS, HR_T) as out:
        with pytest.raises(ValueError, match=r"^data: expected shape \(4, 2, 8\) .* got \(4, 8, 8\)"):
            out.write(np.zeros((4, 8, 8)), (0, 0, 2, 8))
    assert [p.name for p in tmp_path.iterdir()] == ["a.tif"]


def test_integer_output_rounds_and_clips(tmp_path):
    values = np.array([-3.0, 0.4, 0.6, 254.6, 300.0, np.nan]).reshape(1, 1, 6)
    with RasterWriter(tmp_path / "a.tif", 1, 1, 6, None, None, nodata=255, dtype="uint8") as out:
        out.write(values)
    with open_raster(tmp_path / "a.tif") as r:
        np.testing.assert_array_equal(r.read().ravel(), [0, 0, 1, 255, 255, 255])
        assert r.dtype == "uint8" and not r.georeferenced


def test_open_errors_name_the_input(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"^lr_hsi: no such file .*absent.tif"):
        open_raster(tmp_path / "absent.tif", "lr_hsi")
    (tmp_path / "notes.tif").write_text("not a raster")
    with pytest.raises(ValueError, match=r"^hr_msi: cannot open .*notes.tif as a raster"):
        open_raster(tmp_path / "notes.tif", "hr_msi")
    data = lr_cube()[:3]
    data.tofile(tmp_path / "bad.img")
    (tmp_path / "bad.hdr").write_text("ENVI\nsamples = 10\nlines = 12\nbands = 3\nheader offset = 0\n"
                                      "data type = 4\ninterleave = bsq\nbyte order = 0\nwavelength = {450, 550}\n")
    with pytest.raises(ValueError, match=r"^lr_hsi: expected 3 wavelengths \(one a band\) in the ENVI header .* got 2"):
        open_raster(tmp_path / "bad.hdr", "lr_hsi")
    (tmp_path / "lonely.hdr").write_text("ENVI\n")
    with pytest.raises(FileNotFoundError, match=r"^lr_hsi: .*lonely.hdr: ENVI header without a data file"):
        open_raster(tmp_path / "lonely.hdr", "lr_hsi")


def test_aligned_pair_passes(pair):
    assert check_alignment(*pair, scale=SCALE) == "georeferenced"


@pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")
def test_ungeoreferenced_pair_passes_on_sizes_only(tmp_path):
    lr = write(tmp_path / "lr.tif", lr_cube(), crs=None)
    msi = write(tmp_path / "msi.tif", msi_cube(), crs=None)
    georef = write(tmp_path / "geo.tif", msi_cube(), transform=HR_T)
    with open_raster(lr, "lr_hsi") as a, open_raster(msi, "hr_msi") as b, open_raster(georef, "hr_msi") as c:
        assert check_alignment(a, b, SCALE) == "ungeoreferenced"
        with pytest.raises(ValueError, match=r"^lr_hsi: expected georeferencing like hr_msi \(EPSG:32633\), "
                                             r"got none"):
            check_alignment(a, c, SCALE)


@pytest.mark.parametrize("crs,transform,size,message", [
    ("EPSG:32634", HR_T, None, r"^hr_msi: expected the CRS of lr_hsi \(EPSG:32633\), got EPSG:32634$"),
    (CRS, from_origin(X0, Y0, 20, 20), None,
     r"^hr_msi: expected pixel size \(10, -10\) \(lr_hsi's \(40, -40\) / scale 4\), got \(20, -20\) \(ratio 2 "),
    (CRS, from_origin(X0 + HR_PIXEL / 2, Y0, HR_PIXEL, HR_PIXEL), None,
     r"^hr_msi: expected the origin of lr_hsi \(500000, 4e\+06\) within 0.1 HR pixel, got \(500005, 4e\+06\) "
     r"\(off by \+0.5 columns, \+0 rows of HR pixels\)$"),
    (CRS, HR_T, (47, 40), r"^hr_msi: expected 48 x 40 pixels \(scale 4 x lr_hsi's 12 x 10\), got 47 x 40 "
                          r"\(-1 rows, \+0 columns\)$"),
    (CRS, Affine(HR_PIXEL, 0.5, X0, 0.5, -HR_PIXEL, Y0), None,
     r"^hr_msi: expected a north-up grid without rotation, got rotation terms b=0.5, d=0.5"),
])
def test_misalignment_says_what_differs(tmp_path, crs, transform, size, message):
    lr = write(tmp_path / "lr.tif", lr_cube()[:2], transform=LR_T)
    msi = write(tmp_path / "msi.tif", msi_cube(*(size or (LR_H * SCALE, LR_W * SCALE))), crs=crs,
                transform=transform)
    with open_raster(lr, "lr_hsi") as a, open_raster(msi, "hr_msi") as b:
        with pytest.raises(ValueError, match=message):
            check_alignment(a, b, SCALE)


def ramp(x, y):
    """A smooth field in the LR CRS's metres: bilinear resampling reproduces it exactly, up to float32."""
    return 0.2 + (x - X0) * 1e-3 - (y - Y0) * 5e-4


def test_aligned_msi_of_a_shifted_msi(tmp_path, pair):
    lr, _ = pair
    # A larger MSI, shifted by 0.37 / 0.61 of an HR pixel: every output pixel lies inside it.
    h, w = LR_H * SCALE + 8, LR_W * SCALE + 8
    t = from_origin(X0 - 3.63 * HR_PIXEL, Y0 + 3.39 * HR_PIXEL, HR_PIXEL, HR_PIXEL)
    x, y = centres(t, *np.meshgrid(np.arange(w), np.arange(h)))
    field = np.stack([ramp(x, y), 2 * ramp(x, y)]).astype(np.float32)
    with open_raster(write(tmp_path / "shifted.tif", field, transform=t), "hr_msi") as msi:
        with pytest.raises(ValueError, match="off by"):
            check_alignment(lr, msi, SCALE)
        with aligned_msi(msi, lr, SCALE) as aligned:
            assert check_alignment(lr, aligned, SCALE) == "georeferenced"
            assert aligned.transform.almost_equals(HR_T, precision=1e-9)
            assert (aligned.bands, aligned.height, aligned.width) == (2, LR_H * SCALE, LR_W * SCALE)
            expected = ramp(*centres(HR_T, *np.meshgrid(np.arange(10, 30), np.arange(4, 20))))
            window = aligned.read((4, 10, 16, 20))
            np.testing.assert_allclose(window[0], expected, atol=1e-4)
            np.testing.assert_allclose(window[1], 2 * expected, atol=2e-4)
            np.testing.assert_array_equal(window, aligned.read()[:, 4:20, 10:30])
        assert not msi.closed  # closing the resampled view leaves the MSI open


def test_aligned_msi_of_a_reprojected_msi(tmp_path, pair):
    lr, _ = pair
    # The same area in the neighbouring UTM zone (a Sentinel-2 tile of the next zone), 10 m pixels: that grid is
    # rotated by the meridian convergence and slightly curved in this one, so the ramp is reproduced only to
    # interpolation error.
    corners = transform_points(CRS, "EPSG:32634", [X0 - 100, X0 + 600], [Y0 + 100, Y0 - 700])
    x0, y1 = min(corners[0]), max(corners[1])
    w, h = int((max(corners[0]) - x0) / 10) + 1, int((y1 - min(corners[1])) / 10) + 1
    t = from_origin(x0, y1, 10.0, 10.0)
    x, y = centres(t, *np.meshgrid(np.arange(w), np.arange(h)))
    x33, y33 = transform_points("EPSG:32634", CRS, x.ravel(), y.ravel())
    field = ramp(np.reshape(x33, x.shape), np.reshape(y33, y.shape))[None].astype(np.float32)
    with open_raster(write(tmp_path / "utm34.tif", field, crs="EPSG:32634", transform=t), "hr_msi") as msi:
        with aligned_msi(msi, lr, SCALE, resampling="bilinear") as aligned:
            assert aligned.crs == lr.crs and aligned.transform.almost_equals(HR_T, precision=1e-9)
            assert check_alignment(lr, aligned, SCALE) == "georeferenced"
            values = aligned.read()[0]
            # Tiles read separately agree with the full read: no seams.
            tiles = np.block([[aligned.read((r, c, 24, 20))[0] for c in (0, 20)] for r in (0, 24)])
    np.testing.assert_allclose(tiles, values, atol=1e-6)
    expected = ramp(*centres(HR_T, *np.meshgrid(np.arange(LR_W * SCALE), np.arange(LR_H * SCALE))))
    np.testing.assert_allclose(values, expected, atol=1e-4)  # the ramp spans 0.2..0.84


@pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")
def test_aligned_msi_needs_a_crs(tmp_path, pair):
    lr, _ = pair
    with open_raster(write(tmp_path / "plain.tif", msi_cube(), crs=None), "hr_msi") as msi:
        with pytest.raises(ValueError, match=r"^hr_msi: expected a CRS to resample hr_msi onto lr_hsi's grid"):
            aligned_msi(msi, lr, SCALE)
        with pytest.raises(ValueError, match=r"^resampling: expected one of nearest, bilinear"):
            aligned_msi(msi, lr, SCALE, resampling="spline")
