"""The reference kernels themselves: known answers and accuracy of the portable math."""

import numpy as np
import pytest

from claspe import reference as R


def test_philox_known_answer():
    # Random123 known-answer vectors for philox4x32-10
    out = R.philox4x32_10((0, 0, 0, 0), (0, 0))
    assert [int(v) for v in out] == [0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8]
    out = R.philox4x32_10((0xFFFFFFFF,) * 4, (0xFFFFFFFF, 0xFFFFFFFF))
    assert [int(v) for v in out] == [0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD]
    out = R.philox4x32_10((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0))
    assert [int(v) for v in out] == [0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1]


def test_portable_log_exp_accuracy():
    rng = np.random.default_rng(0)
    x = np.exp(rng.uniform(-80, 80, 200_000)).astype(np.float32)
    got = R.logf_portable(x).astype(np.float64)
    want = np.log(x.astype(np.float64))
    assert np.max(np.abs(got - want) / np.maximum(np.abs(want), 1.0)) < 3e-7
    y = rng.uniform(-80, 0, 200_000).astype(np.float32)
    e = R.expf_portable(y).astype(np.float64)
    assert np.max(np.abs(e - np.exp(y.astype(np.float64))) / np.exp(y.astype(np.float64))) < 3e-7
    xd = np.exp(rng.uniform(-700, 700, 200_000))
    assert np.max(np.abs(R.log_portable(xd) - np.log(xd)) / np.maximum(1, np.abs(np.log(xd)))) < 1e-15
    assert R.log_portable(np.array([0.0]))[0] == -np.inf


def test_gumbel_moments_and_keying():
    g = R.gumbel_noise((400_000,), seed=7, loop=1, image=3, key=-1)
    assert abs(g.mean() - np.euler_gamma) < 0.01
    assert abs(g.var() - np.pi**2 / 6) < 0.02
    # pure function of the key tuple and position
    g2 = R.gumbel_noise((10, 20, 30), seed=7, loop=1, image=3, key=-1)
    np.testing.assert_array_equal(g2.ravel(), g[:6000])
    assert not np.array_equal(R.gumbel_noise((100,), seed=7, loop=1, image=3, key=2), g[:100])
    with pytest.raises(ValueError):
        R.gumbel_noise((3,), seed=-1, loop=0, image=0, key=0)


def test_box_mean_matches_direct_sum():
    rng = np.random.default_rng(1)
    m = rng.random((2, 7, 9, 5), dtype=np.float32)
    out = R.box_mean(m, (3, 4, 9), (2, 3, 1))  # z patch clipped to 5
    assert out.shape == (2, 3, 2, 1)
    for k in range(2):
        for i in range(3):
            for j in range(2):
                want = m[k, 2 * i:2 * i + 3, 3 * j:3 * j + 4, 0:5].astype(np.float64).mean()
                assert abs(out[k, i, j, 0] - want) <= 1e-6 * abs(want)


def test_entropy_zero_prob_is_zero():
    p = np.zeros((3, 2, 2, 2), np.float32)
    p[1] = 1.0
    assert np.all(R.entropy(p) == 0)
