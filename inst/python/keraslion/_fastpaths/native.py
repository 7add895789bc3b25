"""Lion's step in C: the int8 step (`int8_step.c`) for PyTorch's CPU tensors,
and as an XLA custom call for JAX and TensorFlow on the CPU
(`int8_step_xla.cc`); the float32 and bfloat16-momentum step
(`float_step.c`) for PyTorch's CPU tensors (`torch.py`).

Written with the backends' operations, the int8 step decodes, steps and
encodes in many passes over memory (PyTorch: about 50 operations per piece,
0.2x float32's step; XLA: three loops, each decoding the codes, 0.6x). The
kernel reads each weight, gradient and code once and writes each once.

It is compiled on first use with the system's compiler (`$CC`, else `cc`;
for XLA, `$CXX`, else `c++`, with the FFI headers jaxlib or TensorFlow
ships) for this CPU, and kept in a cache directory, one file per version
of its source, compiler and CPU, the newest `KEPT` of each source
(`$KERASLION_CACHE_DIR`, else `$XDG_CACHE_HOME/keraslion` or
`~/.cache/keraslion`; where it cannot be written or run from, a directory
of this user's own in the system's temporary one). Without a compiler
(with a `KernelWarning`), or with `KERASLION_NATIVE=0`, the backend's own
operations run the step: on PyTorch the same weights and int8 state,
bit for bit; on XLA the same as its operations one by one (the custom call
runs on XLA's threads, which flush subnormal numbers to zero, as XLA's
operations do; PyTorch keeps them).
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shlex
import stat
import struct
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).parent
#: No contraction into fused multiply-adds (the default on aarch64) and no
#: fast-math: one rounding per operation, as PyTorch computes it. Without
#: trapping math (floating-point exceptions, which nothing reads), GCC turns
#: the selects into vector blends and vectorizes the loops.
FLAGS = ("-O3", "-ffp-contract=off", "-fno-trapping-math", "-fPIC", "-shared")

_POINTER, _INT64, _FLOAT = ctypes.c_void_p, ctypes.c_int64, ctypes.c_float
_INT8_ARGUMENTS = {
    "keraslion_int8_step": [_POINTER] * 3 + [_INT64] * 2 + [_POINTER, _INT64, _POINTER]
                           + [_INT64] * 2 + [_FLOAT] * 5 + [ctypes.c_int, _FLOAT],
    "keraslion_int8_steps": [_INT64] + [_POINTER] * 8 + [ctypes.c_uint32] + [_POINTER] * 2
                            + [_FLOAT] * 6,
}
_FLOAT_ARGUMENTS = {"keraslion_float_steps": [_INT64] + [_POINTER] * 8 + [_FLOAT] * 6}
#: Every ctypes library's (`lion_step.h`): (arguments, result).
_FLUSH_FUNCTIONS = {"keraslion_flush_mode": ([], ctypes.c_uint32),
                    "keraslion_set_flush_mode": ([ctypes.c_uint32], None)}
#: What every C step includes.
HEADER = HERE / "lion_step.h"

#: Elements per thread at least: fewer take longer to hand out than to step
#: (`kPerThread` in int8_step_xla.cc).
PER_THREAD = 1 << 16
_POOLS: dict[int, ThreadPoolExecutor] = {}
#: The name of the XLA custom call.
TARGET = "keraslion_int8_steps"


def enabled() -> bool:
    """Whether the kernel may be used (`KERASLION_NATIVE=0` turns it off)."""
    return os.environ.get("KERASLION_NATIVE", "1") != "0"


@functools.cache
def int8_library() -> Any:
    """The compiled `int8_step.c` for ctypes (its functions `keraslion_int8_step`,
    for a piece, and `keraslion_int8_steps`, for runs of whole variables), or
    None where it cannot be built."""
    return _c_library(HERE / "int8_step.c", _INT8_ARGUMENTS)


@functools.cache
def float_library() -> Any:
    """The compiled `float_step.c` for ctypes (`keraslion_float_steps`: runs of
    whole float32 variables with a float32 or bfloat16 momentum), or None
    where it cannot be built."""
    return _c_library(HERE / "float_step.c", _FLOAT_ARGUMENTS)


def _c_library(source: Path, functions: dict[str, list[Any]]) -> Any:
    library = _loaded("CC", "cc", ["-std=c11"], source, HEADER)
    if library is None:
        return None
    typed = {name: (arguments, None) for name, arguments in functions.items()}
    for name, (arguments, result) in {**typed, **_FLUSH_FUNCTIONS}.items():
        getattr(library, name).argtypes = arguments
        getattr(library, name).restype = result
    return library


def threads_for(elements: int) -> int:
    """Threads for a step of this many elements: PyTorch's intra-op threads
    (`torch.get_num_threads()`), as many as the process may use, each with
    at least PER_THREAD elements."""
    import torch

    return max(1, min(torch.get_num_threads(), usable_cpus(), elements // PER_THREAD))


def in_parallel(run: Callable[[int, int], None], units: int, elements: int,
                library: Any) -> None:
    """`run(begin, end)` over `units` (of `elements` in all), cut into runs,
    one per thread (`threads_for`), calling into `library`; ctypes releases
    the GIL while the kernel runs."""
    threads = min(units, threads_for(elements))
    bounds = [units * i // threads for i in range(threads + 1)]
    all_of([lambda b=b, e=e: run(b, e) for b, e in zip(bounds[:-1], bounds[1:])], library)


def all_of(calls: list[Callable[[], None]], library: Any) -> None:
    """Runs the calls into `library`, the first on this thread and the
    others on a pool's, each in this thread's flush-to-zero mode (as the
    plain path runs: a pool's thread keeps the mode it started with)."""
    if len(calls) <= 1:  # (None for variables that are all empty.)
        for call in calls:
            call()
        return
    # One pool per process: a forked child has its parent's pool without its threads.
    if os.getpid() not in _POOLS:
        _POOLS[os.getpid()] = ThreadPoolExecutor(os.cpu_count())
    mode = library.keraslion_flush_mode()
    others = [_POOLS[os.getpid()].submit(_in_mode, library, mode, call) for call in calls[1:]]
    calls[0]()
    for other in others:
        other.result()


def _in_mode(library: Any, mode: int, call: Callable[[], None]) -> None:
    library.keraslion_set_flush_mode(mode)
    call()


@functools.cache
def xla_int8_steps() -> Callable[..., list[Any]] | None:
    """The kernel as a JAX function of (noise keys (one per variable),
    coefficients (learning rate, beta_1, 1 - beta_1, beta_2, 1 - beta_2,
    weight decay), each variable's gradient, weights and int8 state
    (`int8.pack`), one after another, then `blocks` and `decayed`, one per
    variable), returning each variable's new weights and state, one after
    another, from one custom call; None where it cannot be built."""
    import jax

    ffi = getattr(jax, "ffi", None)
    if ffi is None:  # JAX before 0.4.38
        return None
    flags = ["-std=c++17", f"-I{ffi.include_dir()}"]
    library = _loaded("CXX", "c++", flags, HERE / "int8_step_xla.cc", HERE / "int8_step.c", HEADER,
                      jax.__version__.encode())
    if library is None:
        return None
    ffi.register_ffi_target(TARGET, ffi.pycapsule(library.KeraslionInt8Steps), platform="cpu")

    def steps(keys: Any, coefficients: Any, *state: Any, blocks: tuple[int, ...],
              decayed: tuple[bool, ...]) -> list[Any]:
        results = [jax.ShapeDtypeStruct(x.shape, x.dtype)
                   for i, x in enumerate(state) if i % 3]
        aliases = {aliased_operand(i): i for i in range(len(results))}
        # Under `jax.vmap` (an ensemble of optimizers), one call per member.
        call = ffi.ffi_call(TARGET, results, input_output_aliases=aliases,
                            vmap_method="sequential")
        return call(keys, coefficients, *state, blocks=np.asarray(blocks, np.int64),
                    decayed=np.asarray(decayed, np.int64), cpus=usable_cpus())

    return steps


def aliased_operand(result: int) -> int:
    """The operand that result `result` of the custom call is aliased to:
    variable v's weights and state (operands 3v + 3 and 3v + 4, after the
    keys, the coefficients and its gradient) are its results 2v and 2v + 1."""
    return 3 * (result // 2) + 3 + result % 2


@functools.cache
def tf_int8_steps() -> Callable[..., list[Any]] | None:
    """`xla_int8_steps` for TensorFlow, inside a function that XLA compiles
    (`jit_compile=True`); None where it cannot be built or run.

    TensorFlow's XLA has no Python API to register a custom call, so the
    handler is registered through the FFI API its library exports, and
    called from a StableHLO module (`XlaCallModule`, as jax2tf calls JAX
    code), which can alias the results to the weights and int8 state:
    XLA then updates the variables where they lie. (TensorFlow's own
    `XlaCustomCallV2` cannot: it took a copy of the weights at every step.)
    """
    import tensorflow as tf
    from tensorflow.compiler.tf2xla.ops import gen_xla_ops

    api = _tensorflow_ffi_api(tf.sysconfig.get_lib())
    if api is None:
        return _unavailable(HERE / "int8_step_xla.cc",
                            f"TensorFlow {tf.__version__} does not export its XLA's FFI API")
    flags = ["-std=c++17", f"-I{tf.sysconfig.get_include()}"]
    library = _loaded("CXX", "c++", flags, HERE / "int8_step_xla.cc", HERE / "int8_step.c", HEADER,
                      tf.__version__.encode())
    if library is None:
        return None
    library.keraslion_register_int8_steps.argtypes = [ctypes.c_void_p, ctypes.c_char_p,
                                                      ctypes.c_char_p]
    if not library.keraslion_register_int8_steps(api, TARGET.encode(), b"Host"):
        return _unavailable(HERE / "int8_step_xla.cc",
                            f"TensorFlow {tf.__version__}'s XLA refused the custom call")

    def steps(keys: Any, coefficients: Any, *state: Any, blocks: tuple[int, ...],
              decayed: tuple[bool, ...]) -> list[Any]:
        shapes = tuple((tuple(state[i + 1].shape), tuple(state[i + 2].shape))
                       for i in range(0, len(state), 3))
        module = _stablehlo_call(shapes, blocks=blocks, decayed=decayed, cpus=usable_cpus())
        return gen_xla_ops.xla_call_module(
            [keys, coefficients, *state], version=XLA_CALL_MODULE_VERSION, module=module,
            Sout=[s for shapes_of_one in shapes for s in shapes_of_one],
            Tout=[tf.float32, tf.int8] * len(shapes), platforms=["CPU"])

    problem = _first_step_problem(steps)
    if problem:
        return _unavailable(HERE / "int8_step_xla.cc", f"TensorFlow {tf.__version__}'s XLA "
                            f"could not run the custom call: {problem}")
    return steps


#: The version of `XlaCallModule`'s serialization used (9: TensorFlow 2.15
#: and later read it).
XLA_CALL_MODULE_VERSION = 9


def _tensorflow_ffi_api(directory: str) -> int | None:
    """The address of TensorFlow's XLA FFI API (`xla::ffi::GetXlaFfiApi()`,
    which its library exports), or None."""
    for path in sorted(Path(directory).glob("libtensorflow_cc*")):
        try:
            function = ctypes.CDLL(str(path))._ZN3xla3ffi12GetXlaFfiApiEv
        except (OSError, AttributeError):
            continue
        function.restype = ctypes.c_void_p
        return function()
    return None


@functools.lru_cache(maxsize=256)
def _stablehlo_call(shapes: tuple[tuple[tuple[int, ...], tuple[int, ...]], ...],
                    blocks: tuple[int, ...], decayed: tuple[bool, ...], cpus: int) -> str:
    """A StableHLO module whose function is the custom call for variables of
    `shapes` (each one's weights' and int8 state's), each one's results
    aliased to its weights and state."""
    def tensor(dims: tuple[int, ...], dtype: str) -> str:
        return f"tensor<{''.join(f'{d}x' for d in dims)}{dtype}>"

    keys = tensor((len(shapes),), "i32")
    state, results = [], []
    for shape, packed_shape in shapes:
        weights, packed = tensor(shape, "f32"), tensor(packed_shape, "i8")
        state += [weights, weights, packed]
        results += [weights, packed]
    operands = [keys, "tensor<6xf32>", *state]
    names = ", ".join(f"%a{i}" for i in range(len(operands)))
    aliases = ", ".join(f"#stablehlo.output_operand_alias<output_tuple_indices = [{i}], "
                        f"operand_index = {aliased_operand(i)}, operand_tuple_indices = []>"
                        for i in range(len(results)))

    def array(values: tuple[Any, ...]) -> str:
        return f"array<i64: {', '.join(str(int(v)) for v in values)}>"

    attributes = (f"blocks = {array(blocks)}, decayed = {array(decayed)}, "
                  f"cpus = {cpus} : i64")
    arguments = ", ".join(f"%a{i}: {t}" for i, t in enumerate(operands))
    returned = ", ".join(f"%0#{i}" for i in range(len(results)))
    return f"""module @keraslion {{
  func.func public @main({arguments}) -> ({", ".join(results)}) {{
    %0:{len(results)} = stablehlo.custom_call @{TARGET}({names})
      {{api_version = 4 : i32, backend_config = {{{attributes}}},
        output_operand_aliases = [{aliases}]}}
      : ({", ".join(operands)}) -> ({", ".join(results)})
    return {returned} : {", ".join(results)}
  }}
}}"""


def _first_step_problem(steps: Callable[..., list[Any]]) -> str | None:
    """Why a step of one block cannot be compiled and run (an older
    TensorFlow may not read the module), or None; run eagerly, even where
    TensorFlow is tracing a function."""
    import tensorflow as tf

    with tf.init_scope():
        inputs = (tf.zeros((1,), tf.int32), tf.fill((6,), 0.5), tf.ones((1, 256)),
                  tf.zeros((1, 256)), tf.zeros((1, 257), tf.int8))
        try:
            theta = tf.function(partial(steps, blocks=(256,), decayed=(False,)),
                                jit_compile=True)(*inputs)[0]
        except tf.errors.OpError as error:
            return error.message.splitlines()[0]
        # p - lr * sign(beta_1 * 0 + (1 - beta_1) * 1): every weight moves by -0.5.
        return None if bool(tf.reduce_all(theta == -0.5)) else "the step computed other weights"


def usable_cpus() -> int:
    """The CPUs this process may run on (a process pinned to one CPU runs
    one thread: more took turns on it, and the step took 1.3x as long)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


class KernelWarning(UserWarning):
    """A C kernel could not be built or loaded: the backend's operations run
    its step (the same results, more slowly)."""


def _loaded(variable: str, default: str, flags: list[str], source: Path,
            *parts: Path | bytes) -> Any:
    """The library built from `source` (which includes `parts`, files or
    other bytes that decide it) by the compiler `$variable` (else `default`),
    loaded; None, with a `KernelWarning`, where it cannot be."""
    try:
        compiler = shlex.split(os.environ.get(variable, default))
        target, macros = _target(compiler)
        flags = [*FLAGS, *flags, *target]
        # The compiler's predefined macros name its version and the
        # instruction sets it targets: a cache shared by machines of other
        # CPUs (a home on a network drive) holds a library for each.
        decided = [source.read_bytes(),
                   *(p.read_bytes() if isinstance(p, Path) else p for p in parts),
                   macros, " ".join(flags).encode(), platform.machine().encode()]
        key = hashlib.sha256(b"\0".join(decided)).hexdigest()[:16]
    except (OSError, subprocess.SubprocessError) as error:
        return _unavailable(source, f"no working compiler ({error})")
    suffix = ".dll" if sys.platform == "win32" else ".so"
    problems: list[str] = []
    for directory in _directories(problems):
        library = directory / f"{source.stem}-{key}{suffix}"
        try:
            if library.exists():
                try:
                    if _cut_short(library):  # Loading it could crash the process.
                        raise OSError("the file is shorter than its headers say")
                    return ctypes.CDLL(str(library))
                except OSError as error:
                    # Cut short, say: built anew, and replaced once the new
                    # one loads (on a drive that does not run programs, it
                    # is kept for the machines that can, and the next
                    # directory is tried).
                    problems.append(f"{library}: {error}")
            _build(compiler, flags, source, library)
            _forget_old(directory, f"{source.stem}-*{suffix}")
            return ctypes.CDLL(str(library))
        except subprocess.SubprocessError as error:  # The compiler failed: anywhere.
            output = getattr(error, "stderr", b"") or b""
            problems.append(f"{error} {output.decode(errors='replace')[-500:]}")
            break
        except OSError as error:  # Not writable, or not executable (noexec): the next one.
            problems.append(f"{directory}: {error}")
    return _unavailable(source, "; ".join(problems))


def _cut_short(library: Path) -> bool:
    """Whether an ELF library ends before its section headers, which the
    linker writes last (a copy or sync of the cache cut short: the dynamic
    loader can crash on such a file, where a shorter one makes it fail)."""
    with open(library, "rb") as file:
        header = file.read(64)
    if header[:4] != b"\x7fELF" or len(header) < 52:
        return False
    order = "<" if header[5] == 1 else ">"
    wide = header[4] == 2  # 64-bit
    # e_shoff, then e_shentsize and e_shnum.
    offset = struct.unpack_from(order + ("Q" if wide else "I"), header, 0x28 if wide else 0x20)[0]
    size, count = struct.unpack_from(order + "2H", header, 0x3A if wide else 0x2E)
    return library.stat().st_size < offset + size * count


#: What runs instead of each kernel, and how its results compare.
_INSTEAD = {
    "int8_step": "the int8 step (the same results on PyTorch; on JAX and TensorFlow, within a "
                 "unit in the last place)",
    "float_step": "PyTorch's float32 and bfloat16-momentum steps (the same results, within a "
                  "rounding)",
}


def _unavailable(source: Path, reason: str) -> None:
    instead = _INSTEAD[source.stem.removesuffix("_xla")]
    warnings.warn(f"keraslion: the C kernel {source.name} could not be built or loaded, so the "
                  f"backend's operations run {instead}, more slowly. "
                  f"{reason}. (Set KERASLION_NATIVE=0 to not try.)", KernelWarning, stacklevel=3)
    return None


def _build(compiler: list[str], flags: list[str], source: Path, library: Path) -> None:
    """Builds `library` under a name of its own, loads it (so that a library
    that cannot run is not kept), then renames it into place: processes
    building at once each rename a whole, working library there."""
    library.parent.mkdir(parents=True, exist_ok=True)
    handle, partial = tempfile.mkstemp(suffix=library.suffix, dir=library.parent)
    os.close(handle)
    try:
        subprocess.run([*compiler, *flags, "-o", partial, str(source)], capture_output=True,
                       check=True, timeout=300)
        ctypes.CDLL(partial)
        os.replace(partial, library)
    finally:
        if os.path.exists(partial):
            os.remove(partial)


def _directories(refused: list[str]) -> Iterator[Path]:
    """Where libraries are kept: the cache directory, else a temporary one
    of this user's own (others cannot put a library there), made only when
    it is needed; why that one was refused goes into `refused`."""
    yield _cache_directory()
    if not hasattr(os, "getuid"):  # Windows: the temporary directory is the user's.
        yield Path(tempfile.gettempdir()) / "keraslion"
        return
    private = Path(tempfile.gettempdir()) / f"keraslion-{os.getuid()}"
    try:
        private.mkdir(mode=0o700, exist_ok=True)
        status = private.lstat()
    except OSError as error:
        refused.append(f"{private}: {error}")
        return
    if (stat.S_ISDIR(status.st_mode) and status.st_uid == os.getuid()
            and not status.st_mode & 0o077):
        yield private
    else:
        refused.append(f"{private}: not a directory of this user's alone")


#: Libraries of one source kept in the cache (other versions, compilers and
#: CPUs sharing it), the most recently built.
KEPT = 8


def _forget_old(directory: Path, pattern: str) -> None:
    """Removes all but the KEPT newest libraries matching `pattern`, so that
    upgrades do not fill the cache, and what builds killed midway left
    there an hour ago or more. (A process that loaded a library keeps it;
    one removed by another process at the same time is no error.)"""
    try:
        built = sorted(directory.glob(pattern), key=lambda path: path.stat().st_mtime)
        left = [path for path in directory.glob("tmp*")
                if path.stat().st_mtime < time.time() - 3600]
        for path in built[:-KEPT] + left:
            path.unlink(missing_ok=True)
    except OSError:
        pass


def _target(compiler: list[str]) -> tuple[list[str], bytes]:
    """This CPU's instruction sets (`-march=native`: AVX-512 or AVX2 made the
    step 2-4x faster than SSE2's; on x86, 512-bit vectors where the CPU has
    them, 8% faster than GCC's choice of 256), as far as the compiler knows
    the flags, and the predefined macros that go with them."""
    for target in (["-march=native", "-mprefer-vector-width=512"], ["-march=native"], []):
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
