"""Helpers shared by the benchmarks: synthetic fold probabilities, the plain PyTorch query pipeline
(written the way the reference implementation, nnActive, computes a ClaSP PE query), per-image
quotas, memory measurement and a machine description.

Nothing here is imported by the package; the benchmarks run as scripts (``python benchmarks/x.py``).
"""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Sequence

import numpy as np

# ----------------------------------------------------------------------------------------------
# data
# ----------------------------------------------------------------------------------------------


def random_probabilities(rng: np.random.Generator, C: int, shape: Sequence[int], dtype=np.float32) -> np.ndarray:
    """[C, X, Y, Z] softmax-like probabilities (random, normalised over the class axis)."""
    a = rng.random((C, *shape), dtype=np.float32)
    a += np.float32(1e-3)
    a /= a.sum(axis=0, keepdims=True)
    return a if np.dtype(dtype) == np.float32 else a.astype(dtype)


def make_folds(C: int, shape: Sequence[int], M: int, *, seed: int = 0, dtype=np.float32) -> list[np.ndarray]:
    """M independent random folds (one generator seeded with ``seed``)."""
    rng = np.random.default_rng(seed)
    return [random_probabilities(rng, C, shape, dtype) for _ in range(M)]


def fold_bytes(folds) -> int:
    return int(sum(np.asarray(f).nbytes for f in folds))


def read_once_seconds(folds, repeat: int = 3) -> float:
    """The read-bandwidth bound: best time of one pass over all fold bytes (a NumPy sum per fold,
    single-threaded, bandwidth-limited)."""
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        for f in folds:
            np.add.reduce(np.asarray(f).reshape(-1), dtype=np.float32)
        best = min(best, time.perf_counter() - t)
    return best


# ----------------------------------------------------------------------------------------------
# query settings (METHOD.md 1.6: per-image quotas with n = 20, fg share 0.66)
# ----------------------------------------------------------------------------------------------


def per_image_quotas(n_fg: int, n: int = 20, share: float = 0.66) -> dict[int, int]:
    """Per-image quota for each foreground key 1..n_fg and the plain key -1."""
    q = {k: max(1, int(n * share / (n_fg + 1))) for k in range(1, n_fg + 1)}
    q[-1] = max(1, int(n * (1 - share)))
    return q


def key_order(n_fg: int, seed: int) -> list[int]:
    keys = [*range(1, n_fg + 1), -1]
    np.random.default_rng(seed).shuffle(keys)
    return keys


# ----------------------------------------------------------------------------------------------
# the plain PyTorch pipeline (as nnActive computes a ClaSP PE query)
# ----------------------------------------------------------------------------------------------


def _does_overlap(a_start, a_size, b_start, b_size) -> bool:
    return all(s1 < s2 + z2 and s2 < s1 + z1 for s1, z1, s2, z2 in zip(a_start, a_size, b_start, b_size))


def torch_box_means(folds, patch, stride):
    """Stack all folds, mean over folds, PE with torch.log (0*log0 -> 0), PE*p_c for every channel
    plus PE (C+1 maps), then the box filter: scipy.signal.convolve (valid) for stride 1, else a
    conv3d with the stride.  Returns a float32 numpy array [C+1, nx, ny, nz]."""
    import torch

    probs = torch.stack([torch.as_tensor(np.asarray(f)).float() for f in folds])  # [M, C, X, Y, Z]
    mean = probs.mean(dim=0)
    del probs
    plogp = mean * torch.log(mean)
    plogp[torch.isnan(plogp)] = 0.0
    pe = -plogp.sum(dim=0)
    del plogp
    maps = torch.cat([pe[None] * mean, pe[None]])
    del mean, pe
    kernel = [min(p, d) for p, d in zip(patch, maps.shape[1:])]
    vol = float(np.prod(kernel))
    if int(np.prod(stride)) == 1:
        from scipy import signal

        w = np.ones(kernel, np.float32) / np.float32(vol)
        return np.stack([signal.convolve(m.numpy(), w, mode="valid") for m in maps]).astype(np.float32)
    w = torch.ones((1, 1, *kernel), dtype=torch.float32) / vol
    with torch.no_grad():
        out = torch.nn.functional.conv3d(maps[:, None], w, stride=tuple(stride))[:, 0]
    return out.numpy()


def torch_pipeline(folds, *, n_fg: int, patch, stride, beta: float = 1.0, seed: int = 0):
    """The whole per-image query: box means, log + Gumbel noise (numpy), then per key a full argsort
    of the candidates and a Python greedy loop that checks each candidate against the list of
    boxes chosen so far.  Returns (box means [C+1, ...], {key: [start tuples]})."""
    agg = torch_box_means(folds, patch, stride)
    size = tuple(min(p, d) for p, d in zip(patch, np.asarray(folds[0]).shape[1:]))
    rng = np.random.default_rng(seed)
    quotas = per_image_quotas(n_fg)
    chosen: list[tuple] = []
    picks: dict[int, list] = {}
    for key in key_order(n_fg, seed):
        a = agg[key] if key >= 0 else agg[-1]
        with np.errstate(divide="ignore"):
            noised = np.log(a) + rng.gumbel(0.0, 1.0 / beta, a.shape)
        order = np.argsort(-noised.ravel(), kind="stable")
        picks[key] = []
        for idx in order:
            if len(picks[key]) >= quotas[key]:
                break
            start = tuple(int(i) * int(s) for i, s in zip(np.unravel_index(idx, a.shape), stride))
            if any(_does_overlap(start, size, b, size) for b in chosen):
                continue
            chosen.append(start)
            picks[key].append(start)
    return agg, picks


def claspe_pipeline(folds, *, n_fg: int, patch, stride, beta: float = 1.0, seed: int = 0, image: int = 0):
    """The same query with the engine: fused fold_box_scores (fg classes + PE), Philox power noise
    per key, grid-mask selection.  Returns (box means [n_fg+1, ...], {key: starts array})."""
    from claspe import ops

    classes = list(range(1, n_fg + 1))
    agg = ops.fold_box_scores(folds, score="class_pe", classes=classes, patch=patch, stride=stride)
    volume = np.asarray(folds[0]).shape[1:] if not isinstance(folds[0], (str, os.PathLike)) else None
    if volume is None:
        volume = np.load(folds[0], mmap_mode="r").shape[1:]
    quotas = per_image_quotas(n_fg)
    order = key_order(n_fg, seed)
    noised = np.stack([
        ops.power_noise(agg[k - 1 if k > 0 else -1], beta, seed=seed, loop=0, image=image, key=k) for k in order
    ])
    sel = ops.select_patches(noised, patch=patch, stride=stride, volume_shape=volume,
                             quotas=[quotas[k] for k in order])
    return agg, {k: s for k, (s, _) in zip(order, sel)}


# ----------------------------------------------------------------------------------------------
# memory and machine
# ----------------------------------------------------------------------------------------------


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def rss_bytes() -> int:
    """Current resident set size of this process."""
    return _status_kib("VmRSS") * 1024


def reset_peak_rss() -> bool:
    """Resets this process's peak RSS (VmHWM) to the current RSS (Linux >= 4.0); False if unsupported."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def peak_rss_bytes() -> int:
    """Peak resident set size of this process since start or the last :func:`reset_peak_rss`."""
    return _status_kib("VmHWM") * 1024


def machine_description() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError):
        mem = float("nan")
    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    return (f"{cpu}, {os.cpu_count()} logical CPUs, {mem:.1f} GiB RAM, Linux {platform.release()}, "
            f"Python {platform.python_version()}, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
