"""``claspe query``: select boxes to annotate from per-fold probability files of your own data.

Probability folder layouts (detected automatically)
---------------------------------------------------
``folds``   ``PROB_DIR/fold_0/CASE.npz``, ``PROB_DIR/fold_1/CASE.npz``, ... -- one nnU-Net
            ``nnUNetv2_predict ... -f F --save_probabilities -o PROB_DIR/fold_F`` run per fold model
            (nnU-Net also writes ``CASE.pkl`` and ``CASE.nii.gz`` there; they are ignored).
``cases``   ``PROB_DIR/CASE/fold_0.npz``, ``PROB_DIR/CASE/fold_1.npz``, ... (``.npy`` also accepted).
``flat``    ``PROB_DIR/CASE.npz`` holding ``[M, C, X, Y, Z]`` (M models) or ``[C, X, Y, Z]`` (one model).

A ``.npz`` holds the key ``probabilities`` (nnU-Net's files) or exactly one array.  Arrays are
``[C, X, Y, Z]`` with C = classes incl. background, in the array order nnU-Net uses for the image
(SimpleITK order (z, y, x) for NIfTI); patch coordinates refer to these axes.  Folds are read one at a
time (never all in memory).

Outputs in ``--output`` (default: the current folder)
-----------------------------------------------------
``loop_XXX.json``  nnActive's loop file ``{"patches": [{"file", "coords", "size"}, ...]}`` with
                   ``XXX = loop + 1`` (``loop_000.json`` is the starting budget); ``file`` is
                   ``CASE + --suffix``.
``masks/CASE.nii.gz``  uint8 mask per pool image, 1 inside the selected boxes, written with the geometry
                   of ``--labels``/``--images`` when given (else spacing 1, identity direction).
"""

from __future__ import annotations

import argparse
import logging
import re
from collections.abc import Sequence
from pathlib import Path

log = logging.getLogger(__name__)

_FOLD_RE = re.compile(r"^fold_(\d+)$")
_ARRAY_SUFFIXES = (".npz", ".npy")


def _case_name(path: Path) -> str | None:
    for s in _ARRAY_SUFFIXES:
        if path.name.endswith(s):
            return path.name[: -len(s)]
    return None


def find_probability_files(folder: str | Path) -> tuple[str, dict[str, list[Path]]]:
    """``(layout, {case: [fold files in fold order]})`` of a probability folder (see module doc)."""
    root = Path(folder)
    if not root.is_dir():
        raise FileNotFoundError(f"probability folder {root} not found")
    fold_dirs = sorted(
        ((int(m.group(1)), d) for d in root.iterdir() if d.is_dir() and (m := _FOLD_RE.match(d.name))),
    )
    if fold_dirs:
        per_fold = []
        for f, d in fold_dirs:
            files = {}
            for p in sorted(d.iterdir()):
                c = _case_name(p)
                if c is not None and p.is_file():
                    if c in files:
                        raise ValueError(f"{d}: case {c!r} has both a .npz and a .npy file")
                    files[c] = p
            per_fold.append((f, d, files))
        cases = sorted(set().union(*(set(files) for _, _, files in per_fold)))
        if not cases:
            raise ValueError(f"no .npz/.npy probability files in the fold folders of {root}")
        for _, d, files in per_fold:
            missing = [c for c in cases if c not in files]
            if missing:
                raise ValueError(f"{d} lacks the probabilities of {len(missing)} case(s): {missing[:5]}")
        return "folds", {c: [files[c] for _, _, files in per_fold] for c in cases}
    case_dirs = {}
    for d in sorted(p for p in root.iterdir() if p.is_dir()):
        folds = []
        for p in d.iterdir():
            c = _case_name(p)
            m = _FOLD_RE.match(c) if c is not None else None
            if m and p.is_file():
                folds.append((int(m.group(1)), p))
        if folds:
            idx = sorted(f for f, _ in folds)
            if len(set(idx)) != len(idx):
                raise ValueError(f"{d}: a fold has both a .npz and a .npy file")
            case_dirs[d.name] = [p for _, p in sorted(folds)]
    if case_dirs:
        counts = {len(v) for v in case_dirs.values()}
        if len(counts) > 1:
            raise ValueError(f"cases in {root} have different numbers of fold files: {sorted(counts)}")
        return "cases", case_dirs
    flat = {}
    for p in sorted(root.iterdir()):
        c = _case_name(p)
        if c is not None and p.is_file():
            if c in flat:
                raise ValueError(f"{root}: case {c!r} has both a .npz and a .npy file")
            flat[c] = [p]
    if flat:
        return "flat", flat
    raise ValueError(
        f"{root} holds no probability files: expected fold_F/CASE.npz, CASE/fold_F.npz or CASE.npz (see --help)"
    )


class _FoldFiles(Sequence):
    """Lazy per-fold sequence: item f loads fold f's file (and records the image shape)."""

    def __init__(self, paths: list[Path], case: str, shapes: dict):
        self._paths = list(paths)
        self._case = case
        self._shapes = shapes

    def __len__(self) -> int:
        return len(self._paths)

    def __getitem__(self, i):
        from claspe.strategies._io import load_array_file

        a = load_array_file(self._paths[i], f"case {self._case!r} fold {i}")
        self._shapes[self._case] = tuple(a.shape[-3:])
        return a


def _flat_folds(path: Path, case: str, shapes: dict):
    """Folds of a flat file ``[M, C, X, Y, Z]`` or ``[C, X, Y, Z]``, loaded when first needed."""
    from claspe.strategies._io import load_array_file

    a = load_array_file(path, f"case {case!r}")
    if a.ndim not in (4, 5):
        raise ValueError(f"{path}: expected [M, C, X, Y, Z] or [C, X, Y, Z], got shape {a.shape}")
    shapes[case] = tuple(a.shape[-3:])
    if a.ndim == 5:
        yield from a
    else:
        yield a


def _find_image(folder: Path, case: str, suffix: str, *, channel: bool) -> Path | None:
    names = [case + suffix] + ([case + "_0000" + suffix] if channel else [])
    for n in names:
        if (folder / n).is_file():
            return folder / n
    return None


def _cmd_query(args: argparse.Namespace) -> int:

    import numpy as np

    from claspe.data import io as dio
    from claspe.strategies import get_strategy, list_strategies
    from claspe.strategies._io import as_patches
    from claspe.types import Patch

    if args.list:
        for name, desc in list_strategies(aliases=args.verbose_list, descriptions=True):
            print(f"{name:34s} {desc}")
        return 0
    if args.query_size is None or args.patch_size is None:
        raise ValueError("--query-size and --patch-size are required (see claspe query --help)")
    for opt, vals in (("--patch-size", args.patch_size), ("--stride", args.stride)):
        if len(vals) not in (1, 3):
            raise ValueError(f"{opt} takes 1 value (same on every axis) or 3 values, got {len(vals)}: {vals}")
    out = Path(args.output)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--output {out} exists and is not a folder")
    strategy = get_strategy(args.strategy)
    suffix = args.suffix
    shapes: dict[str, tuple] = {}
    probabilities = None
    cases: list[str] = []
    if args.prob_dir is not None:
        layout, files = find_probability_files(args.prob_dir)
        log.info("probability layout %r: %d cases, %d fold file(s) each", layout, len(files),
                 len(next(iter(files.values()))))
        cases = sorted(files)
        if layout == "flat":
            probabilities = {c + suffix: _flat_folds(files[c][0], c, shapes) for c in cases}
        else:
            probabilities = {c + suffix: _FoldFiles(files[c], c, shapes) for c in cases}
    elif strategy.uses_probabilities:
        raise ValueError(f"strategy {strategy.name!r} needs the probability folder PROB_DIR")
    labels = None
    geometry_dir = None
    if args.labels is not None:
        ldir = Path(args.labels)
        if not ldir.is_dir():
            raise FileNotFoundError(f"labels folder {ldir} not found")
        geometry_dir = (ldir, False)
        wanted = cases or sorted(p.name[: -len(suffix)] for p in ldir.iterdir() if p.name.endswith(suffix))
        if not wanted:
            raise ValueError(f"no *{suffix} label files in {ldir}")
        labels = {}
        for c in wanted:
            p = _find_image(ldir, c, suffix, channel=False)
            if p is None:
                raise FileNotFoundError(f"label file {ldir / (c + suffix)} not found")
            labels[c + suffix] = dio.read_image(p).array
            shapes.setdefault(c, tuple(labels[c + suffix].shape))
        cases = cases or wanted
    elif strategy.needs_labels:
        raise ValueError(f"strategy {strategy.name!r} needs --labels (ground-truth label folder)")
    if args.images is not None:
        geometry_dir = (Path(args.images), True)
        if not geometry_dir[0].is_dir():
            raise FileNotFoundError(f"images folder {geometry_dir[0]} not found")
    annotated = []
    for jf in args.annotated or []:
        jp = Path(jf)
        data = dio.read_json(jp, missing=f"annotated loop file {jp} not found")
        entries = data.get("patches") if isinstance(data, dict) else data
        if not isinstance(entries, list):
            raise ValueError(f"{jp}: expected {{'patches': [...]}} (nnActive loop file)")
        try:
            annotated.extend(as_patches(entries, "patch"))
        except ValueError as exc:
            raise ValueError(f"{jp}: {exc}") from exc
    patches = strategy.query(
        probabilities,
        query_size=args.query_size,
        patch_size=args.patch_size if len(args.patch_size) == 3 else args.patch_size[0],
        stride=args.stride if len(args.stride) == 3 else args.stride[0],
        n_patch_per_image=args.n_patch_per_image,
        loop=args.loop,
        num_loops=args.num_loops,
        seed=args.seed,
        annotated=annotated,
        rng=args.rng,
        labels=labels,
        classes=args.classes,
    )
    json_path = out / (args.json_name or f"loop_{args.loop + 1:03d}.json")
    dio.write_json(json_path, {"patches": [p.to_json() for p in patches]})
    print(f"{len(patches)} patches -> {json_path}")
    if not args.no_masks:
        mask_dir = out / "masks"
        by_case: dict[str, list[Patch]] = {}
        for p in patches:
            by_case.setdefault(p.file[: -len(suffix)] if suffix and p.file.endswith(suffix) else p.file, []).append(p)
        for c in cases:
            shape = shapes.get(c)
            if shape is None:
                raise ValueError(f"shape of case {c!r} unknown")
            mask = np.zeros(shape, np.uint8)
            for p in by_case.get(c, []):
                sl = tuple(slice(s, s + z) for s, z in zip(p.coords, p.size))
                mask[sl] = 1
            kwargs = {}
            if geometry_dir is not None:
                ref = _find_image(geometry_dir[0], c, suffix, channel=geometry_dir[1])
                if ref is None:
                    log.warning("no reference image for %s in %s; writing the mask with default geometry", c,
                                geometry_dir[0])
                else:
                    h = dio.read_header(ref)
                    if tuple(h.shape[-3:]) != tuple(shape):
                        raise ValueError(f"{ref} has shape {h.shape}, but the probabilities of {c!r} have {shape}")
                    kwargs = {"spacing": h.spacing[-3:], "origin": h.origin, "direction": h.direction}
            dio.write_image(mask_dir / (c + ".nii.gz"), mask, dtype=np.uint8, **kwargs)
        print(f"{len(cases)} masks -> {mask_dir}")
    return 0


def register(subparsers) -> None:
    """Adds ``claspe query`` to the ``claspe`` command."""
    p = subparsers.add_parser(
        "query",
        help="select boxes to annotate from per-fold probability files (nnU-Net --save_probabilities)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("prob_dir", nargs="?", metavar="PROB_DIR",
                   help="folder of probability files (layouts above); may be omitted for the random baselines "
                        "when --labels is given")
    p.add_argument("-s", "--strategy", default="clasp_pe",
                   help="query strategy (default clasp_pe); nnActive names are accepted; --list shows all")
    p.add_argument("-q", "--query-size", type=int, help="number of boxes to select (required)")
    p.add_argument("-p", "--patch-size", type=int, nargs="+", metavar="N",
                   help="box size in voxels, 1 value (cube) or 3 values in array order (required)")
    p.add_argument("--stride", type=int, nargs="+", default=[1], metavar="N",
                   help="candidate stride, 1 or 3 values (default 1: every position; larger is faster)")
    p.add_argument("--n-patch-per-image", type=int, default=None, metavar="N",
                   help="candidate boxes per image (default: the query size)")
    p.add_argument("--loop", type=int, default=0,
                   help="0-based AL loop index; picks beta of scheduled strategies and names loop_{loop+1}.json")
    p.add_argument("--num-loops", type=int, default=5,
                   help="number of AL loops (trainings) of the schedule, default 5 -> beta 1, 3.16, 10, 31.6, 100")
    p.add_argument("--seed", type=int, default=12345,
                   help="experiment seed; with --rng nnactive pass the reference's query seed instead "
                        "(experiment seed + loop + 1), it seeds numpy.random.default_rng as given")
    p.add_argument("--rng", choices=("philox", "nnactive"), default="philox",
                   help="philox (default): order/thread/device-independent noise; nnactive: numpy stream of the "
                        "reference implementation")
    p.add_argument("--classes", type=int, nargs="+", default=None, metavar="K",
                   help="foreground class ids to stratify over (default: 1..C-1)")
    p.add_argument("--annotated", nargs="+", metavar="JSON",
                   help="loop_XXX.json files of boxes already annotated; new boxes never overlap them")
    p.add_argument("--labels", metavar="DIR",
                   help="ground-truth label folder (CASE+suffix), needed by random_fg33/random_fg66; also gives "
                        "the masks' geometry")
    p.add_argument("--images", metavar="DIR",
                   help="image folder (CASE_0000+suffix or CASE+suffix) giving the masks' geometry")
    p.add_argument("--suffix", default=".nii.gz",
                   help="file ending appended to case names in the JSON and used for --labels/--images "
                        "(default .nii.gz)")
    p.add_argument("-o", "--output", default=".", metavar="DIR", help="output folder (default: current folder)")
    p.add_argument("--json-name", default=None, metavar="NAME", help="name of the JSON file (default loop_XXX.json)")
    p.add_argument("--no-masks", action="store_true", help="do not write the NIfTI masks")
    p.add_argument("--list", action="store_true", help="list the strategies and exit")
    p.add_argument("--list-aliases", dest="verbose_list", action="store_true",
                   help="with --list, also list the nnActive names (aliases)")
    p.set_defaults(func=_cmd_query)
