"""Building the native CPU kernels: C sources compiled on first use, cached, loaded through ctypes.

The kernels themselves: ``_native_sort.py`` (sorting networks: median, trimmed mean, Bulyan),
``_native_gram.py`` (the centred Gram matrix), ``_native_mix.py`` (mixing rows) and
``security/_native_ranks.py`` (stage 1's rank sums) and ``security/_native_kmeans.py`` (stage 1's
small 2-means). Each C source
is compiled with ``$CC`` (default ``cc``) ``-O3 -march=$TDL_NATIVE_MARCH`` (default ``native``; the
sources are portable C with vector extensions, x86 intrinsics and asm only behind ``__AVX512F__``;
tests build them for baseline x86-64 and x86-64-v3, and for aarch64 run under qemu-user) into a
per-user cache,
``$TDL_CACHE_DIR`` (default ``~/.cache/trustworthy_dl``) ``/kernels-u<uid>``, keyed by source,
flags and CPU. Concurrent builds are safe (atomic rename). The cache directory is created with
mode 0700, and a library is loaded only if the directory and the file belong to the current user
and are not writable by group or others (anything else: a warning and the torch path); the
newest :data:`CACHE_ENTRIES` libraries are kept. With no compiler, or ``TDL_NATIVE=0``, every rule
uses its torch path (``AggResult.info["kernel"]`` says which ran for median and trimmed mean). The
libraries are plain C (no Python headers) called through ctypes, which releases the GIL: column
chunks run in parallel threads.
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

__all__ = ["CACHE_ENTRIES", "EXACT", "FUSED", "MAX_ROWS", "MIN_COLUMNS", "enabled", "library"]

#: Plans over more rows than this stay on the torch path (the straight-line body grows as M log^2 M).
MAX_ROWS = 128
#: Inputs narrower than this stay on the torch path (fast enough there; no compile for small tests).
MIN_COLUMNS = 1 << 16

_FLAGS = ("-O3", "-fPIC", "-shared", "-fno-math-errno", "-std=gnu11")
#: Compiled libraries kept in the cache (older ones are removed after a build).
CACHE_ENTRIES = 64
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


def _march() -> str:
    return os.environ.get("TDL_NATIVE_MARCH", "native")


def _cache_dir() -> Path:
    root = os.environ.get("TDL_CACHE_DIR")
    return (Path(root) if root else Path.home() / ".cache" / "trustworthy_dl") / f"kernels-u{os.getuid()}"


def _private(path: Path) -> bool:
    """``path`` belongs to this user and nobody else may write it."""
    st = path.stat()
    return st.st_uid == os.getuid() and not (st.st_mode & 0o022)


def _prepare_dir(path: Path) -> Path:
    """The cache directory, made 0700 if new; a ValueError if it is not private to this user."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    if not _private(path):
        raise ValueError(f"the kernel cache {str(path)!r} is not private to this user (owner or mode)")
    return path


def _prune(path: Path) -> None:
    """Keep the newest CACHE_ENTRIES libraries."""
    libs = sorted(path.glob("*.so"), key=lambda p: p.stat().st_mtime, reverse=True)
    for old in libs[CACHE_ENTRIES:]:
        old.unlink(missing_ok=True)


def _warn(msg: str) -> None:
    global _warned
    if not _warned:
        _warned = True
        warnings.warn(f"trustworthy_dl: {msg}; the aggregators use their slower torch paths", stacklevel=4)


def _build(src: str, name: str, flags: tuple[str, ...]) -> ctypes.CDLL | None:
    cc = os.environ.get("CC", "cc")
    all_flags = (*_FLAGS, f"-march={_march()}", *flags)
    key = hashlib.sha256("\n".join([src, cc, *all_flags, _cpu_signature()]).encode()).hexdigest()[:20]
    try:
        cache = _prepare_dir(_cache_dir())
    except ValueError as err:
        _warn(str(err))
        return None
    target = cache / f"{name}-{platform.machine()}-{key}.so"
    if not target.exists():
        fd, tmp = tempfile.mkstemp(suffix=".so", dir=cache)
        os.close(fd)
        c_file = tmp[:-3] + ".c"
        try:
            Path(c_file).write_text(src)
            proc = subprocess.run(
                [cc, *all_flags, c_file, "-o", tmp], capture_output=True, text=True, timeout=300
            )
            if proc.returncode != 0:
                _warn(f"building a native kernel with {cc} failed ({proc.stderr.strip()[:300]})")
                return None
            os.chmod(tmp, 0o700)
            os.replace(tmp, target)
        finally:
            for f in (tmp, c_file):
                if os.path.exists(f):
                    os.unlink(f)
        _prune(cache)
    if not _private(target):
        _warn(f"refusing to load {str(target)!r}: it is not owned by this user or is writable by others")
        return None
    return ctypes.CDLL(str(target))


def library(src: str, name: str, flags: tuple[str, ...]) -> ctypes.CDLL | None:
    key = "\n".join([src, _march(), *flags])
    with _lock:
        if key not in _libs:
            try:
                _libs[key] = _build(src, name, flags)
            except (OSError, subprocess.SubprocessError) as err:
                _warn(f"a native kernel could not be built or loaded ({err})")
                _libs[key] = None
        return _libs[key]
