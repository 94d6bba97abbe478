"""The CUDA kernels' code against the NumPy reference, without a GPU.

The kernels in csrc/cuda are written as per-element ``__host__ __device__`` bodies; the module exposes
``cuda_emulate_*`` entry points that run exactly those bodies sequentially on host memory.  This checks
the CUDA code's indexing (strides, padding, channel offsets), the lead/lag prefix sums of the box mean,
the noise counter layout, the rank keys and the chunked greedy walk, bit for bit against
``claspe.reference``.  What it cannot check (launch configuration, device memory, CUB's sort, streams)
is covered by tests/test_cuda_gpu.py (marked ``gpu``).

Also here: the pure-Python side of claspe/_cuda.py (array-interface parsing, routing errors), with
stand-in objects that expose host memory through ``__cuda_array_interface__``.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from claspe import _cuda, _ext, ops
from claspe import reference as R

pytestmark = pytest.mark.skipif(not _ext.HAS_CUDA, reason="claspe._C built without its CUDA part (no nvcc)")
C_ = _ext._C


def _probs(rng, shape, dtype=np.float32):
    return R.softmax((rng.normal(size=shape) * 3).astype(np.float32)).astype(dtype)


# (lo, hi) thresholds of the probability checks, as claspe/_cuda.py passes them
LOHI = {d: _cuda.prob_bounds(np.dtype(d))[1:] for d in ("float32", "float16")}

KINDS = [("pe", []), ("class_pe", [1, 3]), ("class_pe", [0]), ("bald", []), ("expected_entropy", [])]


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize("logits", [False, True])
def test_accumulate_and_maps_bitwise(dtype, logits):
    rng = np.random.default_rng(1)
    shape = (4, 9, 7, 11)
    ref = R.FoldAccumulator(track_fold_entropy=True)
    s = np.full(shape, np.nan, np.float32)  # the first fold must not read the buffer
    e = np.full(shape[1:], np.nan, np.float32)
    for f in range(3):
        x = (rng.normal(size=shape) * 4).astype(dtype) if logits else _probs(rng, shape, dtype)
        if f == 1:
            x = np.asfortranarray(x)  # strided input
        if f == 2:
            x = np.ascontiguousarray(x[:, :, ::-1])  # a fresh contiguous fold
        ref.add(x, logits=logits)
        flags = C_.cuda_emulate_accumulate(x, s, e, logits, f == 0, *LOHI[np.dtype(dtype).name])
        assert not any(flags[k] for k in ("nan", "posinf", "neginf", "below", "above")), flags
        assert flags["max_sum_dev"] <= (0.0 if logits else ops.prob_tolerance(dtype))
    assert np.array_equal(s, ref.sum)
    assert np.array_equal(e, ref.entropy_sum)
    mean, mfe = ref.mean(), ref.mean_fold_entropy()
    for score, cls in KINDS:
        want = R.score_maps(mean, score, cls, mfe)
        got = C_.cuda_emulate_score_maps(s, np.float32(3), ops.SCORES.index(score), cls, e, np.float32(3))
        assert np.array_equal(got, want), score
        # public score_maps path: mean given directly (divisor 1), mean fold entropy as given
        got1 = C_.cuda_emulate_score_maps(mean, np.float32(1), ops.SCORES.index(score), cls, mfe, np.float32(1))
        assert np.array_equal(got1, want), score


def test_accumulate_without_entropy_and_one_class():
    rng = np.random.default_rng(2)
    x = np.ones((1, 3, 4, 5), np.float32)
    s = np.zeros_like(x)
    C_.cuda_emulate_accumulate(x, s, None, False, True, *LOHI["float32"])
    assert np.array_equal(s, x)
    lg = rng.normal(size=(1, 3, 4, 5)).astype(np.float32)  # softmax of one class is exactly 1
    C_.cuda_emulate_accumulate(lg, s, None, True, False, *LOHI["float32"])
    assert np.array_equal(s, 2 * x)


def _flags(x, logits=False):
    s = np.zeros(x.shape, np.float32)
    return C_.cuda_emulate_accumulate(x, s, None, logits, True, *LOHI[x.dtype.name])


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_accumulate_checks_in_the_same_pass(dtype):
    """The fused checks see what ops._check_probabilities / _check_finite see (flags and max deviation)."""
    p = _probs(np.random.default_rng(3), (3, 4, 5, 6), dtype)
    ok = _flags(p)
    assert not any(ok[k] for k in ("nan", "posinf", "neginf", "below", "above"))
    assert ok["max_sum_dev"] <= ops.prob_tolerance(dtype)
    for value, flag in ((np.nan, "nan"), (np.inf, "posinf"), (-np.inf, "neginf"), (-0.5, "below"), (1.5, "above")):
        bad = p.copy()
        bad[1, 2, 3, 4] = value
        got = _flags(bad)
        assert got[flag], (value, got)
        got_logits = _flags(bad, logits=True)  # logits: only finiteness matters
        assert got_logits["below"] is False and got_logits["above"] is False
        assert got_logits[flag] == (flag in ("nan", "posinf", "neginf"))
    half = (p.astype(np.float32) * 0.5).astype(dtype)
    assert abs(_flags(half)["max_sum_dev"] - 0.5) < 1e-2


BOX_CASES = [
    ((4, 3, 5), (1, 1, 1)),
    ((5, 20, 4), (2, 3, 4)),  # patch larger than the volume on y
    ((13, 10, 17), (8, 8, 8)),  # patch = volume
    ((6, 6, 6), (5, 1, 3)),  # stride not dividing the extent
    ((1, 1, 1), (3, 2, 5)),
]


@pytest.mark.parametrize("patch, stride", BOX_CASES)
def test_box_mean_bitwise(patch, stride):
    rng = np.random.default_rng(3)
    maps = rng.random((3, 13, 10, 17)).astype(np.float32)
    for a in (maps, maps.astype(np.float16), maps[:, ::-1, :, ::2], np.asfortranarray(maps)):
        assert np.array_equal(C_.cuda_emulate_box_mean(a, patch, stride), R.box_mean(a, patch, stride))
    three_d = maps[1]
    assert np.array_equal(C_.cuda_emulate_box_mean(three_d, patch, stride)[0], R.box_mean(three_d[None], patch, stride)[0])


@settings(max_examples=25, deadline=None)
@given(
    dims=st.tuples(st.integers(1, 9), st.integers(1, 9), st.integers(1, 9)),
    patch=st.tuples(st.integers(1, 10), st.integers(1, 10), st.integers(1, 10)),
    stride=st.tuples(st.integers(1, 4), st.integers(1, 4), st.integers(1, 4)),
    seed=st.integers(0, 2**16),
)
def test_box_mean_random(dims, patch, stride, seed):
    a = np.random.default_rng(seed).random((2,) + dims).astype(np.float32)
    assert np.array_equal(C_.cuda_emulate_box_mean(a, patch, stride), R.box_mean(a, patch, stride))


@pytest.mark.parametrize("key", [-1, 0, 7])
@pytest.mark.parametrize("shape", [(5,), (4, 6), (2, 5, 6, 7)])
def test_power_noise_bitwise(key, shape):
    rng = np.random.default_rng(4)
    sc = rng.random(shape).astype(np.float32)
    sc.reshape(-1)[:3] = 0  # log 0 = -inf
    seed = 2**40 + 12345
    want = R.power_noise(sc, 0.3162, seed=seed, loop=2, image=9, key=key)
    got = C_.cuda_emulate_power_noise(sc, 0.3162, seed, 2, 9, key & 0xFFFFFFFF, None)
    assert np.array_equal(got, want)
    assert np.isneginf(got.reshape(-1)[:3]).all()
    # strided scores give the same values at the same C-order positions
    if len(shape) == 4:
        nc = np.asfortranarray(sc)
        assert np.array_equal(C_.cuda_emulate_power_noise(nc, 0.3162, seed, 2, 9, key & 0xFFFFFFFF, None), want)


@pytest.mark.parametrize("ndtype", [np.float64, np.float32])
def test_log_plus_given_noise_bitwise(ndtype):
    rng = np.random.default_rng(5)
    sc = rng.random((3, 4, 5)).astype(np.float32)
    noise = rng.gumbel(0, 2.0, sc.shape).astype(ndtype)
    assert np.array_equal(C_.cuda_emulate_power_noise(sc, 1.0, 0, 0, 0, 0, noise), R.power_noise(sc, noise=noise))


def _ref_select(sc, vol, patch, stride, quotas, blocked):
    return R.select_patches(sc, patch=patch, stride=stride, volume_shape=vol, quotas=quotas, blocked=blocked)


def _emu_select(sc, vol, patch, stride, quotas, blocked, first_chunk=0):
    boxes = [tuple(b[0]) + tuple(b[1]) for b in blocked]
    return C_.cuda_emulate_select(sc, vol, patch, stride, quotas, boxes, first_chunk)


def _same(a, b):
    assert len(a) == len(b)
    for (s1, v1), (s2, v2) in zip(a, b):
        assert np.array_equal(s1, s2) and s2.dtype == np.int64 and s2.shape[1:] == (3,)
        assert np.array_equal(v1, v2) and v2.dtype == np.float32


@pytest.mark.parametrize("first_chunk", [0, 1, 7])  # 0: default chunk; 1 and 7 force refetching more keys
def test_select_bitwise(first_chunk):
    rng = np.random.default_rng(6)
    vol, patch, stride = (20, 17, 15), (6, 5, 4), (2, 3, 1)
    grid = R.grid_shape(vol, patch, stride)
    sc = rng.random((3,) + grid).astype(np.float32)
    sc[1, :2] = 0.5  # ties: lower flat index first
    sc[2, 0] = -np.inf  # ranked last, still taken when candidates run out
    sc[0, 0, 0, 0] = -0.0
    blocked = [((0, 0, 0), (5, 5, 5)), ((-3, 10, 2), (6, 20, 3))]
    quotas = [3, 5, 400]  # the last key runs out of candidates
    got = _emu_select(sc, vol, patch, stride, quotas, blocked, first_chunk)
    _same(got, _ref_select(sc, vol, patch, stride, quotas, blocked))
    assert len(got[2][1]) < 400


@settings(max_examples=25, deadline=None)
@given(
    dims=st.tuples(st.integers(1, 12), st.integers(1, 12), st.integers(1, 12)),
    patch=st.tuples(st.integers(1, 6), st.integers(1, 6), st.integers(1, 6)),
    stride=st.tuples(st.integers(1, 3), st.integers(1, 3), st.integers(1, 3)),
    quotas=st.lists(st.integers(0, 6), min_size=1, max_size=3),
    seed=st.integers(0, 2**16),
    first_chunk=st.sampled_from([0, 1, 3]),
)
def test_select_random(dims, patch, stride, quotas, seed, first_chunk):
    rng = np.random.default_rng(seed)
    grid = R.grid_shape(dims, patch, stride)
    sc = np.round(rng.random((len(quotas),) + grid), 1).astype(np.float32)  # many ties
    blocked = [((int(rng.integers(-3, dims[0])), 0, int(rng.integers(0, dims[2]))), (2, 3, 2))]
    _same(_emu_select(sc, dims, patch, stride, quotas, blocked, first_chunk),
          _ref_select(sc, dims, patch, stride, quotas, blocked))


def test_select_rejects_nan_and_posinf():
    sc = np.zeros((1, 4, 4, 4), np.float32)
    for bad in (np.nan, np.inf):
        sc[0, 1, 1, 1] = bad
        with pytest.raises(ValueError, match="NaN or \\+Inf"):
            _emu_select(sc, (4, 4, 4), (1, 1, 1), (1, 1, 1), [2], [])


def test_select_everything_blocked_returns_nothing():
    sc = np.ones((2, 3, 3, 3), np.float32)
    got = _emu_select(sc, (3, 3, 3), (1, 1, 1), (1, 1, 1), [4, 4], [((0, 0, 0), (3, 3, 3))])
    assert [len(v) for _, v in got] == [0, 0]


# ---- claspe/_cuda.py, pure Python -------------------------------------------------------------


class HostAsGPU:
    """Host memory dressed up as a GPU array (only for the routing and parsing checks)."""

    def __init__(self, a: np.ndarray, typestr: str | None = None):
        self.a = a
        self.typestr = typestr or a.dtype.str

    @property
    def __cuda_array_interface__(self):
        a = self.a
        return {"shape": a.shape, "typestr": self.typestr, "data": (a.ctypes.data, False),
                "strides": None if a.flags.c_contiguous else a.strides, "version": 3, "stream": 1}


def test_parse_interface_strides_and_dtypes():
    a = np.zeros((2, 3, 4), np.float16)[:, ::-1, ::2]
    ptr, dtype, code, shape, strides, contig, stream = _cuda.parse_interface(HostAsGPU(a).__cuda_array_interface__, "x")
    assert dtype == np.float16 and code == 1 and shape == (2, 3, 2)
    assert strides == tuple(s // 2 for s in a.strides) and not contig and stream == 1
    b = np.zeros((2, 3), np.float32)
    assert _cuda.parse_interface(HostAsGPU(b).__cuda_array_interface__, "x")[5] is True
    with pytest.raises(ValueError, match="must be float32 or float16, got GPU dtype '<i4'"):
        _cuda.parse_interface(HostAsGPU(np.zeros(3, np.int32)).__cuda_array_interface__, "x")
    assert _cuda.is_c_contiguous((1, 3), (99, 1)) and not _cuda.is_c_contiguous((2, 3), (1, 2))


def test_is_gpu_array():
    assert _cuda.is_gpu_array(HostAsGPU(np.zeros(3, np.float32)))
    assert not _cuda.is_gpu_array(np.zeros(3, np.float32))  # numpy's DLPack device is the CPU
    assert not _cuda.is_gpu_array(None) and not _cuda.is_gpu_array([1.0])

    class DL:
        def __dlpack_device__(self):
            return (2, 0)

    assert _cuda.is_gpu_array(DL())


def test_routing_errors_name_the_problem():
    g = HostAsGPU(np.ones((4, 4, 4), np.float32))
    with pytest.raises(ValueError, match="inputs mix CPU and GPU arrays"):
        ops.power_noise(g, noise=np.zeros((4, 4, 4)))
    with pytest.raises(ValueError, match="backend 'cpu' cannot take GPU arrays"):
        ops.box_mean(g, 2, backend="cpu")
    with pytest.raises(ValueError, match="backend must be one of"):
        ops.box_mean(g, 2, backend="gpu")
    acc = ops.FoldAccumulator()
    with pytest.raises(ValueError, match="not CUDA device memory"):
        acc.add(HostAsGPU(_probs(np.random.default_rng(0), (2, 3, 3, 3))))
    assert acc.n_folds == 0 and acc.backend is None
    with pytest.raises(ValueError, match="inputs mix CPU and GPU arrays"):
        ops.fold_box_scores([np.zeros((2, 3, 3, 3), np.float32), g], patch=2)


def test_gpu_path_rejects_bad_dtype_and_shape_before_touching_memory():
    with pytest.raises(ValueError, match="maps must be float32 or float16, got dtype float64"):
        ops.box_mean(HostAsGPU(np.zeros((4, 4, 4), np.float64)), 2)
    with pytest.raises(ValueError, match="maps must have 3 or 4 dimensions"):
        ops.box_mean(HostAsGPU(np.zeros((4, 4), np.float32)), 2)
    with pytest.raises(ValueError, match="fold must have 4 dimensions"):
        ops.FoldAccumulator().add(HostAsGPU(np.zeros((4, 4, 4), np.float32)))
    with pytest.raises(ValueError, match="is empty"):
        ops.power_noise(HostAsGPU(np.zeros((0, 4), np.float32)), 1.0)


@pytest.mark.parametrize(
    "call",
    [
        lambda g: ops.box_mean(g, 2),
        lambda g: ops.power_noise(g, 1.0),
        lambda g: ops.select_patches(g, patch=1, stride=1, volume_shape=(2, 3, 3), quotas=[1]),
        lambda g: ops.score_maps(g),
        lambda g: ops.fold_box_scores([g, g], patch=2),
        lambda g: ops.FoldAccumulator(backend="cuda").add(g),
    ],
    ids=["box_mean", "power_noise", "select_patches", "score_maps", "fold_box_scores", "FoldAccumulator.add"],
)
def test_every_op_routes_gpu_arrays_to_the_cuda_backend(call):
    """A host pointer dressed as a GPU array reaches claspe/_cuda.py (not NumPy) and is refused there."""
    g = HostAsGPU(np.full((1, 2, 3, 3), 1.0, np.float32))
    with pytest.raises(ValueError, match="is not CUDA device memory"):
        call(g)


def test_score_maps_match_the_cpu_engine_bits_including_signed_zeros():
    """One-hot voxels give PE = -0.0 and BALD = max(-0.0 - 0, 0): same bits as the CPU engine."""
    rng = np.random.default_rng(21)
    mean = _probs(rng, (4, 6, 5, 4))
    mean[:, 0] = 0
    mean[1, 0] = 1  # one-hot plane
    mfe = np.zeros(mean.shape[1:], np.float32)
    mfe[1:] = rng.random(mfe[1:].shape).astype(np.float32)
    for score, cls in KINDS:
        cpu = ops.score_maps(mean, score, cls or None, mean_fold_entropy=mfe, backend="cpu")
        emu = C_.cuda_emulate_score_maps(mean, np.float32(1), ops.SCORES.index(score), cls, mfe, np.float32(1))
        assert np.array_equal(emu.view(np.uint32), cpu.view(np.uint32)), score


class _FakeCudaEntryPoints:
    """Stands in for claspe._C's CUDA entry points (there is no GPU here): records the stream of every
    call and pretends the fold passed its checks.  Only claspe/_cuda.py's orchestration is under test."""

    def __init__(self):
        self.calls = []

    def cuda_pointer_device(self, ptr):
        return 0

    def cuda_accumulate(self, fold, old_sum, new_sum, old_ent, new_ent, logits, lo, hi, device, stream):
        self.calls.append(("accumulate", stream))
        return dict(nan=False, posinf=False, neginf=False, below=False, above=False, max_sum_dev=0.0)

    def cuda_divide(self, src, div, out, n, device, stream):
        self.calls.append(("divide", stream))

    def cuda_score_maps(self, src, src_div, kind, classes, mfe, mfe_div, out, device, stream):
        self.calls.append(("maps", stream))

    def cuda_synchronize(self, device, stream):
        self.calls.append(("sync", stream))


def test_gpu_accumulator_keeps_no_fold_and_queues_on_the_stream_of_each_call(monkeypatch):
    """Regressions: the accumulator kept the first fold alive (its DevArray held the array), and mean /
    score maps ran on the stream that was current at the first add() instead of the caller's current one;
    outputs of non-torch/CuPy producers came back without synchronizing the stream the kernels ran on."""
    import gc
    import weakref

    fake = _FakeCudaEntryPoints()
    monkeypatch.setattr(_ext, "_C", fake)
    monkeypatch.setattr(_cuda, "empty", lambda like, shape, dtype: (np.zeros(shape, dtype), 4096))

    class Producer(HostAsGPU):  # a foreign producer whose array interface names stream 7
        @property
        def __cuda_array_interface__(self):
            return {**super().__cuda_array_interface__, "stream": 7}

    fold = Producer(_probs(np.random.default_rng(0), (2, 3, 3, 3)))
    alive = weakref.ref(fold)
    acc = _cuda.CudaFoldAccumulator()
    acc.add(fold)
    del fold
    gc.collect()
    assert alive() is None, "the accumulator keeps the first fold alive"
    acc.mean()
    acc.score_maps("pe", [])
    assert fake.calls == [("accumulate", 7), ("divide", 7), ("sync", 7), ("maps", 7), ("sync", 7)]

    # torch/CuPy folds: the stream is read again at each call (here: the caller switched to stream 99)
    fake.calls.clear()
    acc._like = dataclasses.replace(acc._like, lib="torch")
    monkeypatch.setattr(_cuda, "_lib_stream", lambda lib, device, fallback: 99 if lib == "torch" else fallback)
    acc.mean()
    acc.score_maps("pe", [])
    assert fake.calls == [("divide", 99), ("maps", 99)]


def test_outputs_for_other_producers_fall_back_to_cupy_when_torch_has_no_cuda(monkeypatch):
    """Regression: with a CPU-only torch installed, torch.empty(device='cuda') raised instead of CuPy being
    tried for the outputs of a producer that is neither torch nor CuPy (CuPy is faked here: no GPU)."""
    import contextlib
    import sys
    import types

    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("torch can use CUDA here")

    class FakeCupyArray:
        def __init__(self, shape, dtype):
            self.a = np.empty(shape, dtype)
            self.data = types.SimpleNamespace(ptr=self.a.ctypes.data)

    fake = types.ModuleType("cupy")
    fake.cuda = types.SimpleNamespace(Device=lambda device: contextlib.nullcontext())
    fake.empty = FakeCupyArray
    monkeypatch.setitem(sys.modules, "cupy", fake)
    like = _cuda.DevArray(None, 0, np.dtype(np.float32), 0, (2,), (1,), True, 0, 0, None)
    out, ptr = _cuda.empty(like, (3, 4), np.float32)
    assert isinstance(out, FakeCupyArray) and out.a.shape == (3, 4) and ptr == out.a.ctypes.data
