"""CUDA engine on a real GPU: parity with the CPU engine / NumPy reference, streams, errors.

Marked ``gpu``: run with ``nox -s tests_gpu`` (or ``pytest -m gpu``) on a machine with a CUDA GPU,
a CUDA build of torch, and claspe._C built with its CUDA part.  Elsewhere every test is skipped with
the reason.  GPU-side inputs are torch CUDA tensors (CuPy arrays too when CuPy is installed).
"""

from __future__ import annotations

import numpy as np
import pytest

from claspe import _cuda, _ext, ops
from claspe import reference as R


def _skip_reason() -> str | None:
    if not _ext.HAS_CUDA:
        return "claspe._C was built without its CUDA part (no nvcc at build time)"
    n, why = _ext._C.cuda_device_count()
    if n == 0:
        return f"no usable CUDA GPU ({why})"
    try:
        import torch
    except ImportError:
        return "torch is not installed"
    if not torch.cuda.is_available():
        return "torch cannot use CUDA here (CPU wheel or driver mismatch)"
    return None


_REASON = _skip_reason()
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(_REASON is not None, reason=_REASON or "")]


def _torch():
    import torch

    return torch


def gpu(a: np.ndarray, device: int = 0):
    torch = _torch()
    return torch.from_numpy(np.ascontiguousarray(a)).to(f"cuda:{device}")


def host(t) -> np.ndarray:
    return t.detach().cpu().numpy()


def _probs(rng, shape, dtype=np.float32):
    return R.softmax((rng.normal(size=shape) * 3).astype(np.float32)).astype(dtype)


SHAPES = [(3, 17, 19, 23), (5, 40, 33, 28), (2, 8, 8, 64)]
SCORES = [("pe", None), ("class_pe", [1, 2]), ("bald", None), ("expected_entropy", None)]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize("logits", [False, True])
def test_accumulator_parity(shape, dtype, logits):
    rng = np.random.default_rng([*shape, int(dtype == np.float16), int(logits)])
    folds = [(rng.normal(size=shape) * 4).astype(dtype) if logits else _probs(rng, shape, dtype) for _ in range(3)]
    cpu = ops.FoldAccumulator(track_fold_entropy=True, backend="cpu")
    dev = ops.FoldAccumulator(track_fold_entropy=True)
    for f in folds:
        cpu.add(f, logits=logits)
        dev.add(gpu(f), logits=logits)
    assert dev.backend == "cuda" and dev.n_folds == 3
    out = dev.mean()
    assert out.is_cuda and out.dtype == _torch().float32
    assert np.array_equal(host(out), cpu.mean())
    assert np.array_equal(host(dev.mean_fold_entropy()), cpu.mean_fold_entropy())
    assert np.array_equal(host(dev.fold_sum), cpu.fold_sum)
    for score, cls in SCORES:
        if cls and max(cls) >= shape[0]:
            continue
        assert np.array_equal(host(dev.score_maps(score, cls)), cpu.score_maps(score, cls)), score
        got = host(dev.box_scores(score, cls, patch=(6, 5, 7), stride=(2, 3, 4)))
        np.testing.assert_allclose(got, cpu.box_scores(score, cls, patch=(6, 5, 7), stride=(2, 3, 4)), rtol=1e-5,
                                   atol=0)
        assert np.array_equal(got, cpu.box_scores(score, cls, patch=(6, 5, 7), stride=(2, 3, 4))), score


def test_strided_fold_and_public_score_maps():
    rng = np.random.default_rng(7)
    p = _probs(rng, (4, 12, 10, 9))
    t = gpu(np.ascontiguousarray(p.transpose(0, 3, 2, 1))).permute(0, 3, 2, 1)  # non-contiguous view
    assert not t.is_contiguous()
    for score, cls in SCORES[:2]:
        assert np.array_equal(host(ops.score_maps(t, score, cls)), ops.score_maps(p, score, cls, backend="cpu"))
    mfe = rng.random((12, 10, 9)).astype(np.float32)
    assert np.array_equal(host(ops.score_maps(t, "bald", mean_fold_entropy=gpu(mfe))),
                          ops.score_maps(p, "bald", mean_fold_entropy=mfe, backend="cpu"))


BOX = [((20, 20, 20), (1, 1, 1)), ((32, 74, 74), (8, 8, 8)), ((5, 50, 3), (3, 1, 2)), ((7, 7, 7), (4, 5, 6))]


@pytest.mark.parametrize("patch, stride", BOX)
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_box_mean_parity(patch, stride, dtype):
    rng = np.random.default_rng(8)
    maps = rng.random((3, 36, 50, 35)).astype(dtype)
    want = ops.box_mean(maps, patch, stride, backend="cpu")
    assert np.array_equal(host(ops.box_mean(gpu(maps), patch, stride)), want)
    assert np.array_equal(host(ops.box_mean(gpu(maps[1]), patch, stride)), want[1])
    nc = gpu(maps).transpose(1, 3)  # strided: [K, Z, Y, X] view
    assert np.array_equal(host(ops.box_mean(nc, patch[::-1], stride[::-1])),
                          ops.box_mean(np.ascontiguousarray(maps.swapaxes(1, 3)), patch[::-1], stride[::-1],
                                       backend="cpu"))


@pytest.mark.parametrize("shape", [(1000,), (3, 31, 17), (4, 9, 10, 11)])
@pytest.mark.parametrize("key", [-1, 3])
def test_power_noise_parity(shape, key):
    rng = np.random.default_rng(9)
    s = rng.random(shape).astype(np.float32)
    s.reshape(-1)[:5] = 0
    for beta in (1.0, 0.1):
        want = ops.power_noise(s, beta, seed=12345, loop=3, image=17, key=key, backend="cpu")
        got = host(ops.power_noise(gpu(s), beta, seed=12345, loop=3, image=17, key=key))
        assert np.array_equal(got, want)
        assert np.array_equal(want, R.power_noise(s, beta, seed=12345, loop=3, image=17, key=key))
    noise = rng.gumbel(0, 3.0, shape)
    assert np.array_equal(host(ops.power_noise(gpu(s), noise=gpu(noise))), ops.power_noise(s, noise=noise))


@pytest.mark.parametrize("first_chunk", [0, 1, 5])
def test_select_parity(first_chunk):
    rng = np.random.default_rng(10)
    vol, patch, stride = (60, 50, 40), (20, 20, 20), (2, 3, 2)
    grid = ops.grid_shape(vol, patch, stride)
    sc = np.round(rng.random((4,) + grid), 2).astype(np.float32)
    sc[3, :3] = -np.inf
    blocked = [((0, 0, 0), (30, 30, 30)), ((40, -5, 10), (25, 20, 5))]
    quotas = [3, 2, 5, 100]
    want = ops.select_patches(sc, patch=patch, stride=stride, volume_shape=vol, quotas=quotas, blocked=blocked,
                              backend="cpu")
    got = _cuda.select_patches(gpu(sc), patch=patch, stride=stride, volume_shape=vol, quotas=quotas,
                               blocked=blocked, first_chunk=first_chunk)
    via_ops = ops.select_patches(gpu(sc), patch=patch, stride=stride, volume_shape=vol, quotas=quotas,
                                 blocked=blocked)
    for (s1, v1), (s2, v2), (s3, v3) in zip(want, got, via_ops):
        assert np.array_equal(s1, s2) and np.array_equal(v1, v2)
        assert np.array_equal(s1, s3) and np.array_equal(v1, v3)


def _pipeline(folds, *, device_put, score="class_pe", classes=(1, 2), patch=(16, 16, 16), stride=(4, 4, 4)):
    acc = ops.FoldAccumulator(track_fold_entropy=False)
    for f in folds:
        acc.add(device_put(f))
    box = acc.box_scores(score, list(classes), patch=patch, stride=stride)
    noised = [ops.power_noise(box[k], 0.316, seed=99, loop=1, image=4, key=k if k < len(classes) else -1)
              for k in range(box.shape[0])]
    if hasattr(noised[0], "is_cuda"):
        stacked = _torch().stack(noised)
    else:
        stacked = np.stack(noised)
    vol = folds[0].shape[1:]
    return stacked, ops.select_patches(stacked, patch=patch, stride=stride, volume_shape=vol, quotas=[3, 3, 6])


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_full_query_identical_selection(dtype):
    rng = np.random.default_rng(11)
    folds = [_probs(rng, (3, 48, 40, 36), dtype) for _ in range(5)]
    s_cpu, sel_cpu = _pipeline(folds, device_put=lambda a: a)
    s_gpu, sel_gpu = _pipeline(folds, device_put=gpu)
    assert np.array_equal(host(s_gpu), s_cpu)
    for (a, b), (c, d) in zip(sel_cpu, sel_gpu):
        assert np.array_equal(a, c) and np.array_equal(b, d)
    box_all = ops.fold_box_scores([gpu(f) for f in folds], score="pe", patch=16, stride=4)
    assert np.array_equal(host(box_all), ops.fold_box_scores(folds, score="pe", patch=16, stride=4, backend="cpu"))


def test_non_default_stream():
    torch = _torch()
    rng = np.random.default_rng(12)
    folds = [_probs(rng, (3, 64, 64, 48)) for _ in range(3)]
    _, sel_cpu = _pipeline(folds, device_put=lambda a: a)
    s = torch.cuda.Stream()
    with torch.cuda.stream(s):
        assert _cuda.describe(gpu(folds[0]), "x").stream == s.cuda_stream != 0
        _, sel = _pipeline(folds, device_put=gpu)
        box = ops.box_mean(gpu(folds[0]), 3, 2)
    s.synchronize()
    for (a, b), (c, d) in zip(sel_cpu, sel):
        assert np.array_equal(a, c) and np.array_equal(b, d)
    assert np.array_equal(host(box), ops.box_mean(folds[0], 3, 2, backend="cpu"))


def test_accumulator_outputs_use_the_stream_of_each_call():
    """Folds added on a side stream, mean / maps / box scores asked for on the default stream."""
    torch = _torch()
    rng = np.random.default_rng(19)
    folds = [_probs(rng, (3, 40, 36, 33)) for _ in range(2)]
    cpu = ops.FoldAccumulator(backend="cpu")
    acc = ops.FoldAccumulator()
    s = torch.cuda.Stream()
    with torch.cuda.stream(s):
        for f in folds:
            acc.add(gpu(f))
    for f in folds:
        cpu.add(f)
    mean = acc.mean()  # queued on the default (current) stream now; host() reads it on that stream
    box = acc.box_scores("class_pe", [1], patch=8, stride=(3, 4, 5))
    assert np.array_equal(host(mean), cpu.mean())
    assert np.array_equal(host(box), cpu.box_scores("class_pe", [1], patch=8, stride=(3, 4, 5)))


class _Foreign:
    """A producer that is neither torch nor CuPy: only ``__cuda_array_interface__`` v3 with its stream."""

    def __init__(self, t, stream: int):
        self._t, self._stream = t, stream

    @property
    def __cuda_array_interface__(self):
        return {**self._t.__cuda_array_interface__, "version": 3, "stream": self._stream}


def test_foreign_producer_on_its_interface_stream():
    torch = _torch()
    rng = np.random.default_rng(18)
    maps = rng.random((2, 20, 21, 22)).astype(np.float32)
    probs = _probs(rng, (3, 9, 8, 7))
    s = torch.cuda.Stream()
    with torch.cuda.stream(s):  # the producer writes on s and says so in the interface
        tm, tp = gpu(maps), gpu(probs)
    out = ops.box_mean(_Foreign(tm, s.cuda_stream), 4, 2)  # a torch tensor, finished when returned
    assert np.array_equal(host(out), ops.box_mean(maps, 4, 2, backend="cpu"))
    noised = ops.power_noise(_Foreign(gpu(maps[0]), 1), 0.5, seed=3)  # 1: the legacy default stream
    assert np.array_equal(host(noised), ops.power_noise(maps[0], 0.5, seed=3, backend="cpu"))
    acc, cpu = ops.FoldAccumulator(), ops.FoldAccumulator(backend="cpu")
    acc.add(_Foreign(tp, s.cuda_stream))
    cpu.add(probs)
    assert np.array_equal(host(acc.mean()), cpu.mean())
    assert np.array_equal(host(acc.score_maps("pe")), cpu.score_maps("pe"))


def test_large_fold_offsets_beyond_2_31_elements():
    """A [24, 512, 512, 400] float16 fold: 2.5e9 elements, 5 GB; element and byte offsets need 64 bits."""
    torch = _torch()
    if torch.cuda.get_device_properties(0).total_memory < 40e9:
        pytest.skip("needs about 30 GB of GPU memory")
    C, shape = 24, (512, 512, 400)
    g = torch.Generator(device="cuda").manual_seed(0)
    fold = torch.empty((C, *shape), device="cuda", dtype=torch.float16)
    for x0 in range(0, shape[0], 64):  # torch ops on slabs of < 2**31 elements: only claspe sees the whole
        slab = torch.randn((C, 64, *shape[1:]), device="cuda", generator=g)
        fold[:, x0:x0 + 64] = torch.softmax(slab, dim=0).half()
    del slab
    acc = ops.FoldAccumulator()
    acc.add(fold)
    tail = host(fold[:, -2:]).astype(np.float32)  # the last two x-planes of every channel
    assert np.array_equal(host(acc.mean()[:, -2:]), tail)
    maps = acc.score_maps("class_pe", [C - 1])
    assert np.array_equal(host(maps[:, -2:]), ops.score_maps(tail, "class_pe", [C - 1], backend="cpu"))
    del fold, acc, maps
    torch.cuda.empty_cache()


def test_dlpack_only_producer():
    rng = np.random.default_rng(13)
    maps = rng.random((2, 10, 11, 12)).astype(np.float32)
    t = gpu(maps)

    class OnlyDLPack:
        def __dlpack__(self, stream=None, **kw):
            return t.__dlpack__(stream=stream, **kw)

        def __dlpack_device__(self):
            return t.__dlpack_device__()

    assert np.array_equal(host(ops.box_mean(OnlyDLPack(), 4, 2)), ops.box_mean(maps, 4, 2, backend="cpu"))


def test_cupy_arrays_if_installed():
    cupy = pytest.importorskip("cupy")
    rng = np.random.default_rng(14)
    maps = rng.random((2, 10, 11, 12)).astype(np.float32)
    out = ops.box_mean(cupy.asarray(maps), 4, 2)
    assert isinstance(out, cupy.ndarray)
    assert np.array_equal(cupy.asnumpy(out), ops.box_mean(maps, 4, 2, backend="cpu"))


# ---- errors --------------------------------------------------------------------------------------


def test_bad_folds_leave_the_accumulator_unchanged():
    rng = np.random.default_rng(15)
    p = _probs(rng, (3, 8, 8, 8))
    acc = ops.FoldAccumulator()
    acc.add(gpu(p))
    before = host(acc.fold_sum).copy()
    bad = p.copy()
    bad[1, 2, 3, 4] = np.nan
    with pytest.raises(ValueError, match="fold contains NaN or Inf"):
        acc.add(gpu(bad))
    with pytest.raises(ValueError, match="fold logits contains NaN or Inf"):
        acc.add(gpu(bad), logits=True)
    with pytest.raises(ValueError, match="do not sum to 1"):
        acc.add(gpu(p * 0.5))
    with pytest.raises(ValueError, match="outside \\[0, 1\\]"):
        acc.add(gpu(p * 3 - 1))
    with pytest.raises(ValueError, match="fold has 2 classes, earlier folds had 3"):
        acc.add(gpu(p[:2]))
    with pytest.raises(ValueError, match="fold must be float32 or float16, got dtype float64"):
        acc.add(gpu(p.astype(np.float64)))
    with pytest.raises(ValueError, match="inputs mix CPU and GPU arrays"):
        acc.add(p)
    assert acc.n_folds == 1 and np.array_equal(host(acc.fold_sum), before)


def test_bad_values_and_mixed_devices():
    rng = np.random.default_rng(16)
    s = rng.random((3, 5, 6)).astype(np.float32)
    with pytest.raises(ValueError, match="scores must be >= 0"):
        ops.power_noise(gpu(-s), 1.0)
    with pytest.raises(ValueError, match="beta must be a finite number > 0"):
        ops.power_noise(gpu(s), 0.0)
    with pytest.raises(ValueError, match="inputs mix CPU and GPU arrays"):
        ops.power_noise(gpu(s), noise=s)
    m = rng.random((2, 6, 6, 6)).astype(np.float32)
    m[0, 0, 0, 0] = np.inf
    with pytest.raises(ValueError, match="maps contains NaN or Inf"):
        ops.box_mean(gpu(m), 2)
    sc = np.zeros((1, 4, 4, 4), np.float32)
    sc[0, 1, 1, 1] = np.nan
    with pytest.raises(ValueError, match="NaN or \\+Inf"):
        ops.select_patches(gpu(sc), patch=1, stride=1, volume_shape=4, quotas=[1])
    with pytest.raises(ValueError, match="does not match volume"):
        ops.select_patches(gpu(sc), patch=2, stride=1, volume_shape=4, quotas=[1])
    p = _probs(rng, (2, 4, 4, 4))
    with pytest.raises(ValueError, match="fold 1 dtype float16 differs from fold 0 float32"):  # as on the CPU
        ops.fold_box_scores([gpu(p), gpu(p.astype(np.float16))], patch=2)


@pytest.mark.skipif(_REASON is None and _ext._C.cuda_device_count()[0] < 2, reason="needs two GPUs")
def test_arrays_on_different_devices():
    rng = np.random.default_rng(17)
    s = rng.random((3, 5, 6)).astype(np.float32)
    with pytest.raises(ValueError, match="noise is on cuda:1 but scores is on cuda:0"):
        ops.power_noise(gpu(s, 0), noise=gpu(s, 1))
    acc = ops.FoldAccumulator()
    p = _probs(rng, (2, 4, 4, 4))
    acc.add(gpu(p, 0))
    with pytest.raises(ValueError, match="fold is on cuda:1 but the accumulator is on cuda:0"):
        acc.add(gpu(p, 1))
