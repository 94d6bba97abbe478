"""Query-engine smoke test run inside the image by ci_build.sh (stdin of `python -`).

One image's query on random fold-mean probabilities: score maps -> box means -> power noise ->
greedy patch selection, with the default backend (the compiled engine in the image) and with the
NumPy reference; the results must be bit-identical and the selected patches must not overlap.
"""

import numpy as np

from claspe import _ext, ops

rng = np.random.default_rng(7)
logits = rng.normal(size=(3, 24, 20, 16)).astype(np.float32)
prob = np.exp(logits) / np.exp(logits).sum(axis=0, keepdims=True)
prob = prob.astype(np.float32)
patch, stride = (8, 8, 8), (2, 2, 2)
results = {}
for backend in ("auto", "numpy"):
    maps = ops.score_maps(prob, "class_pe", classes=[1, 2], backend=backend)
    boxes = ops.box_mean(maps, patch, stride, backend=backend)
    noised = ops.power_noise(boxes, beta=2.0, seed=11, loop=0, image=3, key=0, backend=backend)
    sel = ops.select_patches(noised, patch=patch, stride=stride, volume_shape=prob.shape[1:], quotas=[1, 1, 1],
                             backend=backend)
    results[backend] = (maps, boxes, noised, sel)
a, b = results["auto"], results["numpy"]
for x, y, name in zip(a[:3], b[:3], ("score_maps", "box_mean", "power_noise")):
    assert x.dtype == y.dtype and np.array_equal(x, y), f"{name}: compiled engine != reference"
starts = [tuple(int(v) for v in s) for key in a[3] for s in key[0]]
assert [k[0].tolist() for k in a[3]] == [k[0].tolist() for k in b[3]], "select_patches differs"
assert len(starts) == 3, starts
for i, s in enumerate(starts):
    for t in starts[i + 1:]:
        assert any(abs(s[d] - t[d]) >= patch[d] for d in range(3)), f"overlapping patches {s} {t}"
print(f"query smoke OK: extension={bool(_ext.build_info().get('extension'))}, patches {starts}")
