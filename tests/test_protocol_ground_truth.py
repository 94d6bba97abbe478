"""The protocol's oracle mapping reads each pool label on access and keeps nothing in memory."""

from __future__ import annotations

import numpy as np
import pytest


def test_ground_truth_reads_on_access_without_caching(tmp_path, monkeypatch):
    import claspe.data.io as dio
    from claspe.protocol.experiment import GroundTruth

    arrays = {f"c{i}.nii.gz": np.arange(60, dtype=np.uint8).reshape(3, 4, 5) % (i + 2) for i in range(3)}
    for name, a in arrays.items():
        dio.write_image(tmp_path / name, a, spacing=(1.0, 1.0, 1.0))
    (tmp_path / "other.nii.gz").write_bytes(b"")  # in the folder but not in the pool
    gt = GroundTruth(tmp_path, sorted(arrays))
    reads = []
    real = dio.read_image
    monkeypatch.setattr(dio, "read_image", lambda p, *a, **k: reads.append(p.name) or real(p, *a, **k))

    assert list(gt) == sorted(arrays) and len(gt) == 3
    assert "c1.nii.gz" in gt and "other.nii.gz" not in gt and reads == []  # membership reads nothing
    first, second = gt["c1.nii.gz"], gt["c1.nii.gz"]
    np.testing.assert_array_equal(first, arrays["c1.nii.gz"])
    assert first is not second and reads == ["c1.nii.gz", "c1.nii.gz"]  # read each time, not cached
    assert not any(isinstance(v, np.ndarray) for v in vars(gt).values())  # holds no label array
    with pytest.raises(KeyError):
        gt["other.nii.gz"]
    assert {k: v.shape for k, v in gt.items()} == {k: (3, 4, 5) for k in arrays}
