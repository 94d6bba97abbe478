"""claspe.data.io: round trips, the axis convention (SimpleITK, NIfTI, nnU-Net), corrupt files, atomicity."""

from __future__ import annotations

import gzip
import json

import numpy as np
import pytest
import SimpleITK as sitk

from claspe.data import io as dio
from claspe.data.io import check_complete, copy_file, read_header, read_image, write_image, write_json

FLIP = (-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0)  # LPS <-> RAS style flip of x and y


def _arr(shape=(5, 7, 9), dtype=np.int16):
    return (np.arange(np.prod(shape)).reshape(shape) % 97).astype(dtype)


@pytest.mark.parametrize("ending", [".nii.gz", ".nii", ".nrrd", ".mha"])
def test_round_trip_geometry(tmp_path, ending):
    a = _arr()
    p = write_image(tmp_path / f"x{ending}", a, spacing=(2.5, 0.8, 1.2), origin=(10.0, -5.0, 3.0), direction=FLIP)
    img = read_image(p)
    arr, spacing, origin, direction = img  # unpacks as a tuple
    assert arr.dtype == np.int16 and np.array_equal(arr, a)
    assert spacing == pytest.approx((2.5, 0.8, 1.2))
    assert origin == pytest.approx((10.0, -5.0, 3.0))
    assert direction == pytest.approx(FLIP)
    h = read_header(p)
    assert h.shape == (5, 7, 9) and h.spacing == pytest.approx((2.5, 0.8, 1.2)) and h.n_components == 1
    # write back into the same physical space
    q = write_image(tmp_path / f"y{ending}", arr.astype(np.uint8), spacing=spacing, origin=origin, direction=direction)
    r = read_image(q)
    assert r.array.dtype == np.uint8 and np.array_equal(r.array, a.astype(np.uint8))
    for got, want in zip(r[1:], img[1:]):
        assert got == pytest.approx(want)


def test_axis_convention_matches_simpleitk_nifti_and_nnunet(tmp_path):
    """Array axis 0 is SimpleITK's/NIfTI's last axis (k); spacing is reversed; nnU-Net sees the same."""
    nib = pytest.importorskip("nibabel")
    a = np.zeros((4, 6, 8), dtype=np.uint8)
    a[1, 2, 3] = 7
    p = write_image(tmp_path / "x.nii.gz", a, spacing=(3.0, 2.0, 1.0))
    im = sitk.ReadImage(str(p))
    assert im.GetSize() == (8, 6, 4)
    assert im.GetSpacing() == pytest.approx((1.0, 2.0, 3.0))
    assert im.GetPixel(3, 2, 1) == 7  # sitk index (x, y, z) = array index reversed
    n = nib.load(str(p))
    assert n.shape == (8, 6, 4)
    assert np.asarray(n.dataobj)[3, 2, 1] == 7
    assert n.header.get_zooms() == pytest.approx((1.0, 2.0, 3.0))
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO

    data, props = SimpleITKIO().read_images([str(p)])
    assert data.shape == (1, 4, 6, 8) and data[0, 1, 2, 3] == 7
    assert list(props["spacing"]) == pytest.approx([3.0, 2.0, 1.0])


def test_dtype_rules_and_4d(tmp_path):
    assert read_image(write_image(tmp_path / "b.nii.gz", np.ones((2, 3, 4), bool))).array.dtype == np.uint8
    assert read_image(write_image(tmp_path / "f.nii.gz", np.ones((2, 3, 4)))).array.dtype == np.float32
    assert read_image(write_image(tmp_path / "i.nii.gz", np.ones((2, 3, 4), np.int64))).array.dtype == np.int32
    with pytest.raises(ValueError, match="int32"):
        write_image(tmp_path / "big.nii.gz", np.full((2, 2, 2), 2**40, np.int64))
    a4 = _arr((2, 3, 4, 5), np.float32)
    r = read_image(write_image(tmp_path / "four.nii.gz", a4, spacing=(1.0, 2.0, 3.0, 4.0)))
    assert r.array.shape == (2, 3, 4, 5) and np.array_equal(r.array, a4)
    assert r.spacing == pytest.approx((1.0, 2.0, 3.0, 4.0))
    assert read_image(tmp_path / "f.nii.gz", dtype=np.int16).array.dtype == np.int16


@pytest.mark.parametrize(
    "args, match",
    [
        ({"array": np.zeros((3, 3))}, "3D or 4D"),
        ({"spacing": (1.0, 1.0)}, "spacing"),
        ({"spacing": (1.0, -1.0, 1.0)}, "positive"),
        ({"origin": (0.0, 0.0)}, "origin"),
        ({"direction": (1.0, 0.0)}, "direction"),
        ({"name": "x.png"}, "file ending"),
    ],
)
def test_write_image_bad_arguments(tmp_path, args, match):
    arr = args.pop("array", np.zeros((3, 3, 3), np.uint8))
    name = args.pop("name", "x.nii.gz")
    with pytest.raises(ValueError, match=match):
        write_image(tmp_path / name, arr, **args)
    assert not (tmp_path / name).exists()


def test_corrupt_files_raise_value_error_naming_path(tmp_path):
    p = write_image(tmp_path / "good.nii.gz", np.random.default_rng(0).random((10, 20, 30)).astype(np.float32))
    raw = p.read_bytes()
    cases = {
        "trunc.nii.gz": raw[: len(raw) // 2],
        "garbage.nii.gz": b"this is not an image" * 20,
        "empty.nii.gz": b"",
        "gzip_of_garbage.nii.gz": gzip.compress(b"\x00" * 400),
    }
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(ValueError, match=name.replace(".", r"\.")):
            read_image(tmp_path / name)
    # ITK alone reads the truncated file without complaint (zeros): our check is what catches it
    assert sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "trunc.nii.gz"))).shape == (10, 20, 30)
    with pytest.raises(ValueError, match="truncated"):
        check_complete(tmp_path / "trunc.nii.gz")
    # header-only reading of garbage also fails clearly
    with pytest.raises(ValueError, match="garbage"):
        read_header(tmp_path / "garbage.nii.gz")
    # uncompressed NIfTI cut short
    u = write_image(tmp_path / "u.nii", np.ones((10, 20, 30), np.float32), compress=False)
    (tmp_path / "u_trunc.nii").write_bytes(u.read_bytes()[:1000])
    with pytest.raises(ValueError, match=r"u_trunc\.nii is truncated"):
        read_image(tmp_path / "u_trunc.nii")
    with pytest.raises(FileNotFoundError, match="missing"):
        read_image(tmp_path / "missing.nii.gz")
    with pytest.raises(ValueError, match="not a regular file"):
        read_image(tmp_path)


def test_atomic_write_keeps_old_file_on_failure(tmp_path, monkeypatch):
    p = write_image(tmp_path / "x.nii.gz", np.ones((3, 3, 3), np.uint8))
    before = p.read_bytes()

    def boom(img, path, compress):
        with open(path, "wb") as fh:  # leaves a partial temp file behind ...
            fh.write(b"partial")
        raise RuntimeError("disk full")

    monkeypatch.setattr(dio.sitk, "WriteImage", boom)
    with pytest.raises(OSError, match="could not write"):
        write_image(p, np.zeros((3, 3, 3), np.uint8))
    assert p.read_bytes() == before  # ... which never replaces the old file
    assert sorted(q.name for q in tmp_path.iterdir()) == ["x.nii.gz"]  # and is cleaned up


def test_write_replaces_and_cleans_tmp(tmp_path):
    p = tmp_path / "sub" / "x.nii.gz"
    write_image(p, np.ones((3, 3, 3), np.uint8))
    write_image(p, np.full((3, 3, 3), 2, np.uint8))
    assert np.all(read_image(p).array == 2)
    assert sorted(q.name for q in p.parent.iterdir()) == ["x.nii.gz"]


def test_write_json_and_copy_file(tmp_path):
    j = write_json(tmp_path / "a" / "b.json", {"x": [1, 2]})
    assert json.loads(j.read_text()) == {"x": [1, 2]}
    c = copy_file(j, tmp_path / "c" / "d.json")
    assert c.read_bytes() == j.read_bytes()
    with pytest.raises(FileNotFoundError):
        copy_file(tmp_path / "nope.json", tmp_path / "e.json")
    assert not any(q.name == dio.TMP_DIR_NAME for q in tmp_path.rglob("*"))


def test_fast_and_full_completeness_checks(tmp_path):
    rng = np.random.default_rng(1)
    p = write_image(tmp_path / "a.nii.gz", rng.random((16, 32, 32)).astype(np.float32))
    check_complete(p)
    check_complete(p, full=True)
    raw = bytearray(p.read_bytes())
    # cut by a few bytes: the gzip trailer no longer matches the header's size -> full check -> error
    (tmp_path / "cut.nii.gz").write_bytes(bytes(raw[:-7]))
    with pytest.raises(ValueError, match=r"cut\.nii\.gz is corrupt or truncated"):
        check_complete(tmp_path / "cut.nii.gz")
    # a flipped byte in the middle of the compressed stream: only the full check (CRC/inflate) sees it
    raw[len(raw) // 2] ^= 0xFF
    (tmp_path / "flip.nii.gz").write_bytes(bytes(raw))
    with pytest.raises(ValueError, match=r"flip\.nii\.gz is corrupt or truncated"):
        check_complete(tmp_path / "flip.nii.gz", full=True)
    with pytest.raises(ValueError, match=r"flip\.nii\.gz"):
        read_image(tmp_path / "flip.nii.gz", check="full")
    # tiny files: no room for a trailer
    (tmp_path / "tiny.nii.gz").write_bytes(b"\x1f\x8b")
    with pytest.raises(ValueError, match=r"tiny\.nii\.gz"):
        read_image(tmp_path / "tiny.nii.gz")


def test_build_dir_atomically(tmp_path):
    from claspe.data.io import build_dir_atomically

    target = tmp_path / "Dataset001_X"

    def build(tmp, value="a"):
        tmp.mkdir()
        (tmp / "v.txt").write_text(value)

    def is_a(p):
        return (p / "v.txt").read_text() == "a"

    # a failing build leaves nothing behind
    def failing(tmp):
        build(tmp)
        raise RuntimeError("crash while building")

    with pytest.raises(RuntimeError, match="crash"):
        build_dir_atomically(target, failing)
    assert list(tmp_path.iterdir()) == []
    assert build_dir_atomically(target, build, is_same=is_a) == target
    # same content: kept untouched, build not called
    assert build_dir_atomically(target, lambda tmp: pytest.fail("rebuilt"), is_same=is_a) == target
    # other content: refused unless overwrite
    with pytest.raises(FileExistsError, match="overwrite=True"):
        build_dir_atomically(target, lambda tmp: build(tmp, "b"))
    build_dir_atomically(target, lambda tmp: build(tmp, "b"), overwrite=True)
    assert (target / "v.txt").read_text() == "b"

    # a concurrent builder that finishes first wins; our copy is discarded
    def racing(tmp):
        build(tmp)
        (tmp_path / "other").mkdir()
        (tmp_path / "other" / "v.txt").write_text("a")
        import shutil

        shutil.rmtree(target)
        (tmp_path / "other").rename(target)

    assert build_dir_atomically(target, racing, overwrite=True, is_same=is_a) == target
    assert (target / "v.txt").read_text() == "a"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["Dataset001_X"]


def test_parallel_generators_on_one_folder(tmp_path):
    """Grid runs may create the same synthetic dataset at the same time: all succeed, one folder results."""
    from concurrent.futures import ThreadPoolExecutor

    from claspe.data import load_dataset, make_synthetic_dataset

    with ThreadPoolExecutor(4) as ex:
        paths = list(ex.map(lambda _: make_synthetic_dataset(tmp_path, n_cases=3, seed=2, shape=(8, 16, 16)), range(4)))
    assert len(set(paths)) == 1
    assert load_dataset(paths[0], check="deep").num_cases == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["Dataset990_ClaspSynthetic"]
