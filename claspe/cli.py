"""The ``claspe`` command line.

Each area of the package registers its own sub-commands through a ``register(subparsers)``
function in the modules listed in ``COMMAND_MODULES``; heavy imports (torch, nnunetv2) happen
inside the command functions, never at registration, so ``claspe --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import platform
import sys

# modules that add sub-commands (each has ``register(subparsers)``)
COMMAND_MODULES = (
    "claspe.strategies.cli",  # query
    "claspe.protocol.cli",  # prepare, plan, run, demo, evaluate
    "claspe.report.cli",  # report, compare, paper
    "claspe.cluster",  # grid
)


def _package_version(name: str) -> str:
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


def info_dict() -> dict:
    """Versions, what was built, and the thread count, as a dict."""
    from claspe import __version__, _ext

    bi = _ext.build_info()
    threads = bi.get("omp_max_threads")
    return {
        "claspe": __version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "numpy": _package_version("numpy"),
        "torch": _package_version("torch"),
        "nnunetv2": _package_version("nnunetv2"),
        "extension_built": bool(bi.get("extension")),
        "extension_error": bi.get("import_error"),
        "cuda_built": bool(bi.get("cuda_built")),
        "cuda_archs": bi.get("cuda_archs", []),
        "cuda_devices": bi.get("cuda_device_count", 0),
        "cuda_unavailable_reason": bi.get("cuda_unavailable_reason"),
        "cpu_flags": bi.get("cxx_flags", ""),
        "threads": threads if threads is not None else os.cpu_count(),
        "omp_num_threads_env": os.environ.get("OMP_NUM_THREADS", "unset"),
    }


def _cmd_info(args: argparse.Namespace) -> int:
    d = info_dict()
    if args.json:
        import json

        print(json.dumps(d, indent=2))
        return 0
    width = max(len(k) for k in d)
    for k, v in d.items():
        if k in ("extension_error", "cuda_unavailable_reason") and not v:
            continue
        print(f"{k:<{width}}  {v}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="claspe",
        description=(
            "ClaSP PE: class-stratified scheduled power predictive entropy active learning for 3D "
            "segmentation with nnU-Net v2 (nnActive protocol). Run `claspe demo` for a complete "
            "small experiment on the CPU; `claspe COMMAND --help` explains each command."
        ),
    )
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv for debug)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    p = sub.add_parser("info", help="versions, whether the compiled engine and its CUDA part are built, threads")
    p.add_argument("--json", action="store_true", help="print as JSON")
    p.set_defaults(func=_cmd_info)
    for modname in COMMAND_MODULES:
        try:
            mod = importlib.import_module(modname)
        except ModuleNotFoundError as exc:  # an area not installed in this build
            if exc.name and modname.startswith(exc.name):
                continue
            raise
        mod.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    # claspe's own progress messages at INFO; other libraries' only from -v on (-vv: DEBUG everywhere)
    level = logging.WARNING - 10 * min(args.verbose, 2)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("claspe").setLevel(min(level, logging.INFO))
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError) as exc:
        print(f"claspe {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # output piped into e.g. `head`: stop quietly
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
