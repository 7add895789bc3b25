"""The int8 step in C (`int8_step.c`), for PyTorch's CPU tensors.

PyTorch runs the int8 step as about 50 operations per piece, each a pass
over it: 0.2x float32's step. The C kernel decodes, steps and encodes each
element once. It is compiled on first use with the system's C compiler
(`$CC`, else `cc`) and kept in a cache directory, one file per version of
its source and compiler (`$KERASLION_CACHE_DIR`, else
`$XDG_CACHE_HOME/keraslion` or `~/.cache/keraslion`; the system's
temporary directory where these cannot be written). Without a compiler, or
with `KERASLION_NATIVE=0`, PyTorch's piecewise step runs: the same
weights, codes and scales, more slowly.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shlex
import subprocess
import sys
import tempfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

SOURCE = Path(__file__).with_name("int8_step.c")
#: No contraction into fused multiply-adds (the default on aarch64) and no
#: fast-math: one rounding per operation, as PyTorch computes it. Without
#: trapping math (floating-point exceptions, which nothing reads), GCC turns
#: the selects into vector blends and vectorizes the loops.
FLAGS = ("-O3", "-std=c11", "-ffp-contract=off", "-fno-trapping-math", "-fPIC", "-shared")

_POINTER = ctypes.c_void_p
_ARGUMENTS = ([_POINTER] * 4 + [ctypes.c_int64] * 2 + [_POINTER, ctypes.c_int64, _POINTER]
              + [ctypes.c_int64] * 2 + [ctypes.c_float] * 5 + [ctypes.c_int] + [ctypes.c_float] * 3)


def enabled() -> bool:
    """Whether the kernel may be used (`KERASLION_NATIVE=0` turns it off)."""
    return os.environ.get("KERASLION_NATIVE", "1") != "0"


@functools.cache
def int8_step() -> Any:
    """The compiled `keraslion_int8_step`, or None where it cannot be built."""
    try:
        library = ctypes.CDLL(str(_built()))
    except (OSError, subprocess.SubprocessError):
        return None
    function = library.keraslion_int8_step
    function.argtypes = _ARGUMENTS
    function.restype = None
    return function


#: Elements per thread at least: fewer take longer to hand out than to step.
PER_THREAD = 1 << 16
_POOLS: dict[int, ThreadPoolExecutor] = {}


def in_parallel(run: Callable[[int, int], None], units: int, elements: int) -> None:
    """`run(begin, end)` over `units` (of `elements` in all), cut into runs
    for PyTorch's intra-op threads (`torch.get_num_threads()`); ctypes
    releases the GIL while the kernel runs."""
    import torch

    threads = max(1, min(torch.get_num_threads(), units, elements // PER_THREAD))
    if threads == 1:
        run(0, units)
        return
    # One pool per process: a forked child has its parent's pool without its threads.
    if os.getpid() not in _POOLS:
        _POOLS[os.getpid()] = ThreadPoolExecutor(os.cpu_count())
    pool = _POOLS[os.getpid()]
    bounds = [units * i // threads for i in range(threads + 1)]
    list(pool.map(run, bounds[:-1], bounds[1:]))


def _built() -> Path:
    compiler = shlex.split(os.environ.get("CC", "cc"))
    target, macros = _target(compiler)
    flags = [*FLAGS, *target]
    # The compiler's predefined macros name its version and the instruction
    # sets it targets: a cache shared by machines of other CPUs (a home on a
    # network drive) holds a library for each.
    key = hashlib.sha256(b"\0".join([SOURCE.read_bytes(), macros, " ".join(flags).encode(),
                                     platform.machine().encode()])).hexdigest()[:16]
    suffix = ".dll" if sys.platform == "win32" else ".so"
    for directory in (_cache_directory(), Path(tempfile.gettempdir()) / "keraslion"):
        library = directory / f"int8_step-{key}{suffix}"
        if library.exists():
            return library
        try:
            directory.mkdir(parents=True, exist_ok=True)
            # Built under a name of its own, then renamed: processes building
            # at once each rename a whole library into place.
            handle, partial = tempfile.mkstemp(suffix=suffix, dir=directory)
        except OSError:
            continue
        os.close(handle)
        try:
            subprocess.run([*compiler, *flags, "-o", partial, str(SOURCE)], capture_output=True,
                           check=True, timeout=300)
            os.replace(partial, library)
        finally:
            if os.path.exists(partial):
                os.remove(partial)
        return library
    raise OSError("no writable directory for the int8 kernel")


def _target(compiler: list[str]) -> tuple[list[str], bytes]:
    """This CPU's instruction sets (`-march=native`: AVX-512 or AVX2 made the
    step 2-4x faster than SSE2's), where the compiler knows the flag, and the
    predefined macros that go with them."""
    for target in (["-march=native"], []):
        try:
            macros = subprocess.run([*compiler, *target, "-E", "-dM", "-x", "c", "-"], input=b"",
                                    capture_output=True, check=True, timeout=60).stdout
        except subprocess.CalledProcessError:
            continue
        return target, macros
    raise OSError(f"{compiler[0]} cannot compile C")


def _cache_directory() -> Path:
    if "KERASLION_CACHE_DIR" in os.environ:
        return Path(os.environ["KERASLION_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "keraslion"
