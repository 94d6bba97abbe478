"""GPU benchmark of the CUDA query engine against the PyTorch-on-GPU pipeline, same run.

Cases (issue 4): KiTS-like 256^3 C4 M5 patch 64^3 stride 8; AMOS-like 256^3 C16 M5 patch 32x74x74
stride 8; 512x512x400 C16 M5 patch 64^3 stride 8 (float16 folds).  Per case it times

* ``torch``: the reference pipeline as nnActive writes it, on the GPU: all M folds stacked on the
  device, mean over folds, entropy with torch ops, PE*p_c maps, ``conv3d`` box filter with the
  stride, noise, full ``argsort`` and the greedy loop in Python over the sorted candidates;
* ``claspe``: ``ops.FoldAccumulator`` (fused softmax/accumulate, one fold at a time) -> class PE
  maps -> box mean -> power noise -> GPU ranking + host greedy;
* ``bound``: a device-to-device copy of the fold bytes (read + write once): the memory-bandwidth
  bound of anything that reads every fold once.

Fold data are generated on the device (they stand in for the predictor's softmax, which is on the
GPU already).  Prints one table (time of each, ratio, claspe vs bound, peak GPU memory of each).

Without a usable GPU it exits with status 2 and a one-line reason (tested in the CPU suite).
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np

CASES = {
    "kits": dict(shape=(256, 256, 256), C=4, M=5, patch=(64, 64, 64), stride=(8, 8, 8), dtype="float32"),
    "amos": dict(shape=(256, 256, 256), C=16, M=5, patch=(32, 74, 74), stride=(8, 8, 8), dtype="float32"),
    "big": dict(shape=(512, 512, 400), C=16, M=5, patch=(64, 64, 64), stride=(8, 8, 8), dtype="float16"),
}
SMALL = {  # --small: quick check of the script itself
    "kits": dict(shape=(64, 64, 64), C=4, M=5, patch=(16, 16, 16), stride=(4, 4, 4), dtype="float32"),
}


def gpu_unavailable_reason() -> str | None:
    """None when the CUDA engine and torch can use a GPU, else why not."""
    from claspe import _ext

    if not _ext.HAS_EXT:
        return f"claspe._C is not built ({_ext.IMPORT_ERROR})"
    if not _ext.HAS_CUDA:
        return "claspe._C was built without its CUDA part (no nvcc at build time)"
    n, why = _ext._C.cuda_device_count()
    if n == 0:
        return f"no usable CUDA GPU: {why or 'no device'}"
    try:
        import torch
    except ImportError:
        return "torch is not installed"
    if not torch.cuda.is_available():
        return "torch cannot use CUDA (CPU wheel or driver mismatch)"
    return None


def _sync():
    import torch

    torch.cuda.synchronize()


def _quotas(C: int, n: int = 20, fg_share: float = 0.66) -> list[int]:
    fg = C - 1
    per = int(n * fg_share) // fg if fg else 0
    return [per] * fg + [n - per * fg]


def make_folds(case: dict, seed: int = 0, device: str = "cuda"):
    """M folds of softmaxed random logits [C, X, Y, Z] on ``device`` (generated there)."""
    import torch

    g = torch.Generator(device=device).manual_seed(seed)
    dt = getattr(torch, case["dtype"])
    out = []
    for _ in range(case["M"]):
        x = torch.randn((case["C"],) + case["shape"], device=device, generator=g, dtype=torch.float32) * 3
        out.append(torch.softmax(x, dim=0).to(dt))
        del x
    return out


def torch_pipeline(folds, case: dict):
    """The reference's way on the GPU: stacked folds, torch ops, conv3d, argsort, Python greedy."""
    import torch
    import torch.nn.functional as F

    C = case["C"]
    stacked = torch.stack([f.float() for f in folds])  # [M, C, X, Y, Z]
    mean = stacked.mean(0)
    pe = -(mean * torch.log(mean.clamp_min(1e-38))).sum(0)
    maps = torch.stack([pe * mean[c] for c in range(1, C)] + [pe])[:, None]  # [K, 1, X, Y, Z]
    patch = [min(p, d) for p, d in zip(case["patch"], case["shape"])]
    kernel = torch.ones((1, 1, *patch), device=mean.device) / float(patch[0] * patch[1] * patch[2])
    box = F.conv3d(maps, kernel, stride=case["stride"])[:, 0]
    gen = torch.Generator(device=mean.device).manual_seed(1)
    noise = -torch.log(-torch.log(torch.rand(box.shape, device=box.device, generator=gen).clamp(1e-12, 1 - 1e-7)))
    scores = torch.log(box) + noise / 0.316
    grid = box.shape[1:]
    taken: list[tuple] = []
    out = []
    for k, q in enumerate(_quotas(C)):
        order = torch.argsort(scores[k].reshape(-1), descending=True).cpu().numpy()
        got = 0
        for i in order:
            if got >= q:
                break
            gi = (i // (grid[1] * grid[2]), (i // grid[2]) % grid[1], i % grid[2])
            st = tuple(int(g) * s for g, s in zip(gi, case["stride"]))
            if any(all(a < c + d and c < a + b for a, b, c, d in zip(st, patch, b0, patch)) for b0 in taken):
                continue
            taken.append(st)
            out.append((k, st))
            got += 1
    return out


def claspe_pipeline(folds, case: dict):
    import torch

    from claspe import ops

    C = case["C"]
    acc = ops.FoldAccumulator()
    for f in folds:  # in a real run each fold arrives from the predictor and is dropped after add()
        acc.add(f)
    box = acc.box_scores("class_pe", list(range(1, C)), patch=case["patch"], stride=case["stride"])
    keys = list(range(1, C)) + [-1]
    noised = [ops.power_noise(box[k], 0.316, seed=1, loop=0, image=0, key=key) for k, key in enumerate(keys)]
    noised = torch.stack(noised) if isinstance(noised[0], torch.Tensor) else np.stack(noised)  # GPU / CPU
    return ops.select_patches(noised, patch=case["patch"], stride=case["stride"], volume_shape=case["shape"],
                              quotas=_quotas(C))


def d2d_copy(folds):
    import torch

    dst = [torch.empty_like(f) for f in folds]
    for d, s in zip(dst, folds):
        d.copy_(s)
    return dst


def timed(fn, *args, repeat: int = 3):
    import torch

    best = float("inf")
    peak = 0
    for _ in range(repeat):
        _sync()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        t0 = time.perf_counter()
        res = fn(*args)
        _sync()
        best = min(best, time.perf_counter() - t0)
        peak = max(peak, torch.cuda.max_memory_allocated() - base)
        del res
    return best, peak


def run_case(name: str, case: dict, repeat: int, skip_torch: bool) -> dict:
    import torch

    folds = make_folds(case)
    fold_bytes = sum(f.numel() * f.element_size() for f in folds)
    t_bound, _ = timed(d2d_copy, folds, repeat=repeat)
    t_cl, m_cl = timed(claspe_pipeline, folds, case, repeat=repeat)
    row = dict(case=name, fold_gb=fold_bytes / 1e9, bound_s=t_bound, claspe_s=t_cl, claspe_peak_gb=m_cl / 1e9)
    if skip_torch:
        row.update(torch_s=float("nan"), torch_peak_gb=float("nan"))
    else:
        try:
            t_t, m_t = timed(torch_pipeline, folds, case, repeat=1)
            row.update(torch_s=t_t, torch_peak_gb=m_t / 1e9)
        except torch.cuda.OutOfMemoryError:
            torch.cuda.empty_cache()
            row.update(torch_s=float("inf"), torch_peak_gb=float("inf"))
    del folds
    torch.cuda.empty_cache()
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", nargs="+", choices=sorted(CASES), default=sorted(CASES), help="cases to run")
    parser.add_argument("--repeat", type=int, default=3, help="best of N for claspe and the copy bound")
    parser.add_argument("--skip-torch", action="store_true", help="time only claspe and the bound")
    parser.add_argument("--small", action="store_true", help="a tiny KiTS-like case (checks the script)")
    args = parser.parse_args(argv)
    why = gpu_unavailable_reason()
    if why is not None:
        print(f"benchmarks/gpu.py: {why}; nothing to measure.", file=sys.stderr)
        return 2
    import torch

    from claspe import _ext

    cases = SMALL if args.small else {k: CASES[k] for k in args.cases}
    print(f"device: {torch.cuda.get_device_name(0)}; claspe CUDA archs {_ext.build_info()['cuda_archs']}")
    hdr = (f"{'case':<6} {'folds GB':>9} {'copy s':>8} {'claspe s':>9} {'torch s':>9} {'speedup':>8} "
           f"{'vs copy':>8} {'claspe GB':>10} {'torch GB':>9}")
    print(hdr)
    for name, case in cases.items():
        r = run_case(name, case, args.repeat, args.skip_torch)
        print(f"{r['case']:<6} {r['fold_gb']:>9.2f} {r['bound_s']:>8.4f} {r['claspe_s']:>9.4f} {r['torch_s']:>9.4f} "
              f"{r['torch_s'] / r['claspe_s']:>7.1f}x {r['claspe_s'] / r['bound_s']:>7.2f}x "
              f"{r['claspe_peak_gb']:>10.2f} {r['torch_peak_gb']:>9.2f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
