"""CPU benchmark of the compiled query engine against the plain PyTorch pipeline, same run.

Per case it times, each in its own subprocess (so that peak memory is measured separately):

* ``torch``: the query as the reference implementation (nnActive) computes it -- all M folds stacked,
  mean over folds, entropy with ``torch.log``, PE*p_c maps for every channel + PE, box filter
  (``scipy.signal.convolve`` for stride 1, else ``conv3d`` with the stride), log + Gumbel noise, a
  full ``argsort`` per key and a Python greedy loop checking each candidate against the list of
  chosen boxes (benchmarks/common.py ``torch_pipeline``);
* ``claspe``: ``ops.fold_box_scores`` (fused, all folds read once) -> ``ops.power_noise`` per key ->
  ``ops.select_patches`` (benchmarks/common.py ``claspe_pipeline``);
* ``read``: the read-bandwidth bound, one pass over all fold bytes (NumPy sum), in the claspe process.

Prints one table: time of each (best of --repeat), speed-up, claspe / read bound, peak RSS of each
and claspe's peak above its inputs; plus the largest relative difference between the two pipelines'
box-mean maps.  The ``stream`` case (512x512x400, C16, M5, float16 = 16.8 GB) writes the folds to
.npy files in a temporary directory, runs claspe only on the memory-mapped files (the PyTorch
pipeline would need the 16.8 GB stacked plus float32 copies: it cannot run in 24 GiB, so it is not
tried) and deletes the files; it runs last.

Usage: python benchmarks/bench_cpu.py [--cases hippocampus,c128,kits,amos,stream] [--repeat 3]
       [--torch-repeat 1] [--threads N]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import common  # noqa: E402

CASES = {
    "hippocampus": dict(label="Hippocampus-like 36x50x35 C3 M5, patch 20^3, stride 1",
                        shape=(36, 50, 35), C=3, M=5, patch=(20, 20, 20), stride=(1, 1, 1), dtype="float32",
                        min_repeat=20),
    "c128": dict(label="128^3 C4 M5, patch 32^3, stride 8",
                 shape=(128, 128, 128), C=4, M=5, patch=(32, 32, 32), stride=(8, 8, 8), dtype="float32"),
    "kits": dict(label="KiTS-like 256^3 C4 M5, patch 64^3, stride 8",
                 shape=(256, 256, 256), C=4, M=5, patch=(64, 64, 64), stride=(8, 8, 8), dtype="float32"),
    "amos": dict(label="AMOS-like 256^3 C16 M5, patch 32x74x74, stride 8",
                 shape=(256, 256, 256), C=16, M=5, patch=(32, 74, 74), stride=(8, 8, 8), dtype="float32"),
    "stream": dict(label="streaming 512x512x400 C16 M5 float16 .npy, patch 64^3, stride 8",
                   shape=(512, 512, 400), C=16, M=5, patch=(64, 64, 64), stride=(8, 8, 8), dtype="float16",
                   stream=True),
}
SEED = 1234


# ----------------------------------------------------------------------------------------------
# workers (run in subprocesses)
# ----------------------------------------------------------------------------------------------


def _set_threads(n: int | None) -> None:
    if n:
        from claspe import ops

        ops.set_num_threads(n)
        import torch

        torch.set_num_threads(n)


def worker(job: dict) -> dict:
    case = CASES[job["case"]]
    _set_threads(job.get("threads"))
    # imports outside the timed regions
    import scipy.signal  # noqa: F401
    import torch  # noqa: F401

    from claspe import ops  # noqa: F401

    n_fg = case["C"] - 1
    kw = dict(n_fg=n_fg, patch=case["patch"], stride=case["stride"], beta=1.0, seed=SEED)
    if job["what"] == "make_files":
        return make_stream_files(case, Path(job["dir"]))
    if job["what"] == "claspe" and case.get("stream"):
        folds = [str(p) for p in sorted(Path(job["dir"]).glob("fold*.npy"))]
        t0 = time.perf_counter()
        read = read_files_once(folds)
        read_wall = time.perf_counter() - t0
        common.reset_peak_rss()
        base = common.rss_bytes()
        t, c0 = time.perf_counter(), time.process_time()
        agg, picks = common.claspe_pipeline(folds, **kw)
        dt, dc = time.perf_counter() - t, time.process_time() - c0
        return dict(times=[dt], cpu=[dc], read=read, read_wall=read_wall, peak=common.peak_rss_bytes(), base=base,
                    input_bytes=sum(os.path.getsize(f) for f in folds), n_picked=sum(len(v) for v in picks.values()))
    folds = common.make_folds(case["C"], case["shape"], case["M"], seed=SEED, dtype=np.dtype(case["dtype"]))
    out: dict = dict(input_bytes=common.fold_bytes(folds))
    if job["what"] == "claspe":
        from claspe import ops

        out["read"] = common.read_once_seconds(folds)
        out["threads"] = ops.get_num_threads()
        fn = common.claspe_pipeline
    else:
        import torch

        out["threads"] = torch.get_num_threads()
        fn = common.torch_pipeline
    common.reset_peak_rss()
    out["base"] = common.rss_bytes()
    times, cpu = [], []
    for r in range(job["repeat"]):
        t, c0 = time.perf_counter(), time.process_time()
        agg, picks = fn(folds, **kw)
        times.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c0)
        if r == 0:
            out["peak"] = common.peak_rss_bytes()
            if job.get("save"):
                keep = [*range(1, n_fg + 1), -1] if job["what"] == "torch" else list(range(n_fg + 1))
                np.save(job["save"], np.asarray(agg)[keep])
            out["n_picked"] = sum(len(v) for v in picks.values())
        del agg, picks
    out["times"], out["cpu"] = times, cpu
    return out


def make_stream_files(case: dict, d: Path) -> dict:
    """Writes M float16 folds [C, X, Y, Z] as .npy files, x-block by x-block (bounded memory);
    fold m is fold 0 with its channels rolled by m (different data, still valid probabilities)."""
    C, shape, M = case["C"], case["shape"], case["M"]
    rng = np.random.default_rng(SEED)
    mms = [np.lib.format.open_memmap(d / f"fold{m}.npy", mode="w+", dtype=np.float16, shape=(C, *shape))
           for m in range(M)]
    step = 16
    for x0 in range(0, shape[0], step):
        x1 = min(shape[0], x0 + step)
        block = common.random_probabilities(rng, C, (x1 - x0, *shape[1:]), np.float16)
        for m, mm in enumerate(mms):
            mm[:, x0:x1] = np.roll(block, m, axis=0)
    for mm in mms:
        mm.flush()
    del mms
    return dict(files=M, bytes=sum(os.path.getsize(d / f"fold{m}.npy") for m in range(M)))


def read_files_once(paths, block: int = 64 << 20) -> float:
    """The read bound for files: one pass over every byte (readinto a reused buffer)."""
    buf = bytearray(block)
    mv = memoryview(buf)
    t = time.perf_counter()
    for p in paths:
        with open(p, "rb", buffering=0) as fh:
            while fh.readinto(mv):
                pass
    return time.perf_counter() - t


# ----------------------------------------------------------------------------------------------
# parent
# ----------------------------------------------------------------------------------------------


def run_worker(job: dict) -> dict:
    env = dict(os.environ)
    if job.get("threads"):
        env["OMP_NUM_THREADS"] = str(job["threads"])
    proc = subprocess.run([sys.executable, __file__, "--worker", json.dumps(job)], env=env,
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"worker {job} failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def gb(n: float) -> str:
    return f"{n / 2**30:.2f}"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", default=",".join(CASES), help=f"comma list of {list(CASES)}")
    ap.add_argument("--repeat", type=int, default=3, help="claspe runs per case (best is reported)")
    ap.add_argument("--torch-repeat", type=int, default=1, help="PyTorch pipeline runs per case")
    ap.add_argument("--threads", type=int, default=None, help="threads for both (default: OMP_NUM_THREADS / all)")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return 0
    cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    unknown = [c for c in cases if c not in CASES]
    if unknown:
        ap.error(f"unknown cases {unknown}; valid: {list(CASES)}")
    cases.sort(key=lambda c: CASES[c].get("stream", False))  # the streaming case last
    print(f"machine: {common.machine_description()}", flush=True)
    rows = []
    tmp = Path(tempfile.mkdtemp(prefix="claspe_bench_"))
    try:
        for name in cases:
            case = CASES[name]
            print(f"== {case['label']}", flush=True)
            base = dict(case=name, threads=args.threads)
            if case.get("stream"):
                d = tmp / "stream"
                d.mkdir()
                t = time.perf_counter()
                info = run_worker({**base, "what": "make_files", "dir": str(d)})
                print(f"   wrote {info['files']} files, {gb(info['bytes'])} GiB in {time.perf_counter() - t:.0f} s",
                      flush=True)
                c = run_worker({**base, "what": "claspe", "dir": str(d), "repeat": 1})
                shutil.rmtree(d, ignore_errors=True)
                tt = None
                diff = None
            else:
                rep = max(args.repeat, case.get("min_repeat", 1))
                c = run_worker({**base, "what": "claspe", "repeat": rep, "save": str(tmp / "c.npy")})
                print(f"   claspe {min(c['times']):.3f} s", flush=True)
                tt = run_worker({**base, "what": "torch", "repeat": args.torch_repeat, "save": str(tmp / "t.npy")})
                a, b = np.load(tmp / "c.npy"), np.load(tmp / "t.npy")
                diff = float(np.max(np.abs(a.astype(np.float64) - b) / np.maximum(np.abs(b), 1e-12)))
                print(f"   torch  {min(tt['times']):.3f} s   (max rel. diff of box means {diff:.1e})", flush=True)
            rows.append((name, case, c, tt, diff))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print()
    print(f"machine: {common.machine_description()}")
    hdr = ("| case | input GiB | PyTorch s | claspe s | speed-up | read bound s | claspe / bound | PyTorch CPU s "
           "| claspe CPU s | CPU-time speed-up | PyTorch peak RSS GiB | claspe peak RSS GiB "
           "| claspe peak above inputs GiB | box-mean rel. diff |")
    print(hdr)
    print("|" + "---|" * 14)
    for _name, case, c, tt, diff in rows:
        best = int(np.argmin(c["times"]))
        tc, cc = c["times"][best], c["cpu"][best]
        if tt:
            bt = int(np.argmin(tt["times"]))
            ts, tcpu = tt["times"][bt], tt["cpu"][bt]
            torch_cols = (f"{ts:.2f}", f"{ts / tc:.0f}x", f"{tcpu:.2f}", f"{tcpu / cc:.0f}x", gb(tt["peak"]))
        else:
            torch_cols = ("cannot run in 24 GiB (not tried)", "-", "-", "-", "-")
        above = c["peak"] - (c["base"] if not case.get("stream") else 0)
        print(f"| {case['label']} | {gb(c['input_bytes'])} | {torch_cols[0]} | {tc:.3f} | {torch_cols[1]} | "
              f"{c['read']:.3f} | {tc / c['read']:.2f} | {torch_cols[2]} | {cc:.3f} | {torch_cols[3]} | "
              f"{torch_cols[4]} | {gb(c['peak'])} | {gb(above)} | {'-' if diff is None else f'{diff:.1e}'} |")
    print(f"\nclaspe threads: {rows[0][2].get('threads', '?') if rows else '?'}; times are wall-clock seconds, best "
          f"of the repeats; CPU s = process CPU time (all threads) of that run.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
