"""Building the native CPU kernels: C sources compiled on first use, cached, loaded through ctypes.

The kernels themselves: ``_native_sort.py`` (sorting networks: median, trimmed mean, Bulyan) and
``_native_gram.py`` (the centred Gram matrix). Each C source is compiled with ``$CC`` (default
``cc``) ``-O3 -march=native`` into ``$TDL_CACHE_DIR`` (default ``~/.cache/trustworthy_dl/kernels``),
keyed by source, flags and CPU; concurrent builds are safe (atomic rename). With no compiler, or
``TDL_NATIVE=0``, every rule uses its torch path (``AggResult.info["kernel"]`` says which ran for
median and trimmed mean). The libraries are plain C (no Python headers) called through ctypes,
which releases the GIL: column chunks run in parallel threads.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import threading
import warnings
from pathlib import Path

__all__ = ["EXACT", "FUSED", "MAX_ROWS", "MIN_COLUMNS", "enabled", "library"]

#: Plans over more rows than this stay on the torch path (the straight-line body grows as M log^2 M).
MAX_ROWS = 128
#: Inputs narrower than this stay on the torch path (fast enough there; no compile for small tests).
MIN_COLUMNS = 1 << 16

_FLAGS = ("-O3", "-march=native", "-fPIC", "-shared", "-fno-math-errno", "-std=gnu11")
#: Per kernel: the middle means must round as torch does (no fused multiply-add); the Gram wants FMAs.
EXACT = ("-ffp-contract=off",)
FUSED = ("-ffp-contract=fast",)

_lock = threading.Lock()
_libs: dict[str, ctypes.CDLL | None] = {}
_warned = False


def enabled() -> bool:
    """Native kernels are allowed (``TDL_NATIVE`` is not "0") and a C compiler is on the PATH."""
    return os.environ.get("TDL_NATIVE", "1") != "0" and shutil.which(os.environ.get("CC", "cc")) is not None


def _cpu_signature() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _cache_dir() -> Path:
    root = os.environ.get("TDL_CACHE_DIR")
    return (Path(root) if root else Path.home() / ".cache" / "trustworthy_dl") / "kernels"


def _warn(msg: str) -> None:
    global _warned
    if not _warned:
        _warned = True
        warnings.warn(f"trustworthy_dl: {msg}; the aggregators use their slower torch paths", stacklevel=4)


def _build(src: str, name: str, flags: tuple[str, ...]) -> ctypes.CDLL | None:
    cc = os.environ.get("CC", "cc")
    key = hashlib.sha256("\n".join([src, cc, *_FLAGS, *flags, _cpu_signature()]).encode()).hexdigest()[:20]
    target = _cache_dir() / f"{name}-{platform.machine()}-{key}.so"
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
        os.close(fd)
        c_file = tmp[:-3] + ".c"
        try:
            Path(c_file).write_text(src)
            proc = subprocess.run(
                [cc, *_FLAGS, *flags, c_file, "-o", tmp], capture_output=True, text=True, timeout=300
            )
            if proc.returncode != 0:
                _warn(f"building a native kernel with {cc} failed ({proc.stderr.strip()[:300]})")
                return None
            os.replace(tmp, target)
        finally:
            for f in (tmp, c_file):
                if os.path.exists(f):
                    os.unlink(f)
    return ctypes.CDLL(str(target))


def library(src: str, name: str, flags: tuple[str, ...]) -> ctypes.CDLL | None:
    with _lock:
        if src not in _libs:
            try:
                _libs[src] = _build(src, name, flags)
            except (OSError, subprocess.SubprocessError) as err:
                _warn(f"a native kernel could not be built or loaded ({err})")
                _libs[src] = None
        return _libs[src]
