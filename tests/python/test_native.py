"""The int8 step's C kernel (`keraslion/_fastpaths/native.py`): how it is
built and cached, when it runs, and what runs without it. Its arithmetic is
checked against the plain path in test_int8.py and in the path-parity
matrix (its `no_kernel` path runs the backends' own operations)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import keras
import numpy as np
import pytest
from keras import ops

from keraslion import Lion

BACKEND = keras.backend.backend()
torch_only = pytest.mark.skipif(BACKEND != "torch", reason="PyTorch's kernel (through ctypes)")
jax_only = pytest.mark.skipif(BACKEND != "jax", reason="JAX's kernel (an XLA custom call)")
tf_only = pytest.mark.skipif(BACKEND != "tensorflow",
                             reason="TensorFlow's kernel (a custom call in TensorFlow's XLA)")
xla_only = pytest.mark.skipif(BACKEND == "torch", reason="an XLA custom call (JAX, TensorFlow)")
PACKAGE = Path(__file__).resolve().parents[2] / "inst" / "python"

# A few int8 steps of a 300x1000 variable, without weight decay, and of a
# bfloat16 one; prints whether the backend's kernel was built, then a digest
# of the weights, codes and scales (saved too, where `STEPS_SAVED_TO` names a file).
STEPS = """
import hashlib, keras, numpy as np, os
from keraslion import Lion
from keraslion._fastpaths import native
kernel = native.int8_library if keras.backend.backend() == "torch" else native.tf_int8_steps
rng = np.random.default_rng(0)
variables = [keras.Variable(rng.standard_normal((300, 1000)).astype("float32"), dtype=dtype)
             for dtype in ("float32", "bfloat16")]
optimizer = Lion(1e-2, momentum_dtype="int8")
optimizer.build(variables)
for _ in range(3):
    optimizer.apply([rng.standard_normal((300, 1000)).astype("float32") for _ in variables],
                    variables)
digest = hashlib.sha256()
arrays = [keras.ops.convert_to_numpy(x) for x in [*variables, *optimizer.variables]]
for x in arrays:
    digest.update(x.tobytes())
if "STEPS_SAVED_TO" in os.environ:
    np.savez(os.environ["STEPS_SAVED_TO"], *[x.view(f"u{x.itemsize}") for x in arrays])
print(kernel() is not None, digest.hexdigest())
"""


def steps_in_a_new_process(**environment: str) -> subprocess.Popen:
    """STEPS, on PyTorch unless `KERAS_BACKEND` is given."""
    env = {**os.environ, "PYTHONPATH": str(PACKAGE), "KERAS_BACKEND": "torch", **environment}
    return subprocess.Popen([sys.executable, "-c", STEPS], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def result(process: subprocess.Popen) -> tuple[bool, str]:
    """Whether the kernel was built, and the digest; a KernelWarning printed
    must say that it was not."""
    out, err = process.communicate(timeout=300)
    assert process.returncode == 0, err
    built, digest = out.split()
    assert ("KernelWarning" in err) == (built == "False"), err[-2000:]
    return built == "True", digest


@torch_only
def test_processes_building_at_once_share_one_library_and_agree(tmp_path: Path) -> None:
    """Four processes building into one empty cache directory each get a
    whole library (no partial files are left), and step identically."""
    if shutil.which(os.environ.get("CC", "cc")) is None:
        pytest.skip("no C compiler")
    cache, temporary = tmp_path / "cache", tmp_path / "tmp"
    temporary.mkdir()
    processes = [steps_in_a_new_process(KERASLION_CACHE_DIR=str(cache), TMPDIR=str(temporary))
                 for _ in range(4)]
    results = [result(p) for p in processes]
    assert all(built for built, _ in results)
    assert len({digest for _, digest in results}) == 1
    assert [p.suffix for p in cache.iterdir()] == [".so" if sys.platform != "win32" else ".dll"]
    # Nothing in the temporary directory (R CMD check counts what is left there).
    assert not [p for p in temporary.iterdir() if "keraslion" in p.name]


@torch_only
def test_the_cache_keeps_the_newest_libraries(tmp_path: Path) -> None:
    """Libraries of other versions (or compilers, or CPUs) pile up with
    upgrades: building one keeps the `KEPT` newest, the new one among them."""
    if shutil.which(os.environ.get("CC", "cc")) is None:
        pytest.skip("no C compiler")
    from keraslion._fastpaths import native

    suffix = ".so" if sys.platform != "win32" else ".dll"
    old = [tmp_path / f"int8_step-old{i:02d}{suffix}" for i in range(native.KEPT + 3)]
    for age, path in enumerate(old):
        path.write_bytes(b"")
        os.utime(path, (1e9 + age, 1e9 + age))
    other = tmp_path / f"int8_step_xla-old{suffix}"  # another source's: not counted
    other.write_bytes(b"")
    built, _ = result(steps_in_a_new_process(KERASLION_CACHE_DIR=str(tmp_path)))
    assert built
    left = sorted(p.name for p in tmp_path.iterdir())
    newest = [p.name for p in old[-(native.KEPT - 1):]]
    assert len(left) == native.KEPT + 1 and set(newest) <= set(left) and other.name in left


@torch_only
def test_without_a_compiler_or_when_turned_off_the_step_is_the_same(tmp_path: Path) -> None:
    """No compiler (and no library cached), or `KERASLION_NATIVE=0`:
    PyTorch's piecewise step runs, with the kernel's weights, codes and scales."""
    built = result(steps_in_a_new_process(KERASLION_CACHE_DIR=str(tmp_path / "a")))
    no_compiler = result(steps_in_a_new_process(KERASLION_CACHE_DIR=str(tmp_path / "b"),
                                                CC="/nonexistent/cc"))
    broken_compiler = result(steps_in_a_new_process(KERASLION_CACHE_DIR=str(tmp_path / "c"),
                                                    CC="true"))
    turned_off = result(steps_in_a_new_process(KERASLION_NATIVE="0", CC="/nonexistent/cc"))
    assert no_compiler[0] is False and broken_compiler[0] is False
    assert built[1] == no_compiler[1] == broken_compiler[1] == turned_off[1]
    assert not list((tmp_path / "c").glob("*.so"))  # Nothing that cannot load is kept.


@tf_only
def test_tensorflow_without_a_compiler_or_when_turned_off_steps_the_same(tmp_path: Path) -> None:
    """No C++ compiler (and no library cached), or `KERASLION_NATIVE=0`:
    TensorFlow's operations run the step, with a `KernelWarning` (but when
    turned off), and with the kernel's weights (here, without weight decay,
    where XLA's fused operations can round otherwise) and scales, and its
    codes but for a rare one a code apart: XLA's fused operations may
    round a momentum an ulp apart, which moves its code where the noise
    lands within that ulp of a rounding boundary (one in 2**20)."""
    def steps(name: str, **environment: str) -> tuple[bool, str]:
        return result(steps_in_a_new_process(KERAS_BACKEND="tensorflow",
                                             STEPS_SAVED_TO=str(tmp_path / f"{name}.npz"),
                                             **environment))

    built = steps("built", KERASLION_CACHE_DIR=str(tmp_path / "a"))
    no_compiler = steps("no_compiler", KERASLION_CACHE_DIR=str(tmp_path / "b"),
                        CXX="/nonexistent/c++")
    turned_off = steps("turned_off", KERASLION_NATIVE="0", CXX="/nonexistent/c++")
    assert built[0] is True and no_compiler[0] is False
    assert no_compiler[1] == turned_off[1]
    kernel, operations = (np.load(tmp_path / f"{name}.npz") for name in ("built", "turned_off"))
    weights, weights_bfloat16, iterations, learning_rate, codes, codes_bfloat16 = (
        f"arr_{i}" for i in range(6))
    for name in (weights, weights_bfloat16, iterations, learning_rate):
        np.testing.assert_array_equal(kernel[name], operations[name])
    for name in (codes, codes_bfloat16):  # (codes and exponent bytes; as uint8)
        state, other = (x[name].view(np.int8).astype(int) for x in (kernel, operations))
        assert (state != other).sum() <= 3 and (np.abs(state - other) <= 1).all()


@torch_only
@pytest.mark.parametrize("kept", [0.0, 0.5], ids=["empty", "half"])
def test_a_cached_library_that_does_not_load_is_built_anew(tmp_path: Path, kept: float) -> None:
    """A library cut short (a full disk, a copy of the cache interrupted) is
    built anew; half of one would crash the dynamic loader, not fail."""
    if shutil.which(os.environ.get("CC", "cc")) is None:
        pytest.skip("no C compiler")
    assert result(steps_in_a_new_process(KERASLION_CACHE_DIR=str(tmp_path)))[0]
    [library] = tmp_path.iterdir()
    whole = library.read_bytes()
    library.write_bytes(whole[:int(len(whole) * kept)])
    assert result(steps_in_a_new_process(KERASLION_CACHE_DIR=str(tmp_path)))[0]
    assert library.read_bytes() == whole


@torch_only
def test_a_cache_directory_that_cannot_be_made_falls_back_to_the_temporary_one(
        tmp_path: Path) -> None:
    if shutil.which(os.environ.get("CC", "cc")) is None:
        pytest.skip("no C compiler")
    blocker = tmp_path / "a file"
    blocker.write_text("")
    built, _ = result(steps_in_a_new_process(KERASLION_CACHE_DIR=str(blocker / "cache")))
    assert built
    if hasattr(os, "getuid"):  # This user's own: no one else can put a library there.
        private = Path(tempfile.gettempdir()) / f"keraslion-{os.getuid()}"
        assert private.stat().st_mode & 0o777 == 0o700
        assert list(private.glob("int8_step-*"))


def compiled_step_text(monkeypatch: Any, kernel: bool, count: int = 1, **settings: Any) -> str:
    """The compiled HLO of a step of `count` 300x1000 variables as `fit`
    runs it: on JAX a jitted, donated `stateless_apply`; on TensorFlow
    `apply` in a function that XLA compiles."""
    monkeypatch.setenv("KERASLION_NATIVE", "1" if kernel else "0")
    dtype = settings.pop("dtype", "float32")
    variables = [keras.Variable(np.ones((300, 1000), "float32"), dtype=dtype)
                 for _ in range(count)]
    optimizer = Lion(1e-3, momentum_dtype="int8", **settings)
    optimizer.build(variables)
    grads = [ops.ones((300, 1000), dtype) for _ in variables]
    if BACKEND == "tensorflow":
        import tensorflow as tf

        step = tf.function(lambda: optimizer.apply(grads, variables), jit_compile=True)
        return step.experimental_get_compiler_ir()(stage="optimized_hlo")
    import jax

    step = jax.jit(lambda weights, state, grads: optimizer.stateless_apply(state, grads, weights),
                   donate_argnums=(0, 1))
    return step.lower([v.value for v in variables], [v.value for v in optimizer.variables],
                      grads).compile().as_text()


def xla_kernel() -> Any:
    """The backend's XLA kernel (None where it could not be built)."""
    from keraslion._fastpaths import native

    return native.xla_int8_steps() if BACKEND == "jax" else native.tf_int8_steps()


@xla_only
@pytest.mark.parametrize("count", [1, 3])
def test_compiled_int8_step_is_one_custom_call_in_place(monkeypatch: Any, count: int) -> None:
    """With donated buffers (JAX), or the variables' own (TensorFlow), the
    step of every variable is one custom call that writes the weights,
    codes and scales where they lie (no copy of them)."""
    from keraslion._fastpaths import native

    assert xla_kernel() is not None, "the kernel did not build"
    text = compiled_step_text(monkeypatch, kernel=True, count=count)
    assert text.count(f'custom_call_target="{native.TARGET}"') == 1
    assert not [line for line in text.splitlines()
                if " copy(" in line and ("300,1000" in line or "300,4" in line)]


@xla_only
@pytest.mark.parametrize("settings", [{"kernel": False}, {"cautious": True},
                                      {"dtype": "bfloat16"}],
                         ids=["turned_off", "cautious", "bfloat16_weights"])
def test_compiled_steps_without_the_kernel_where_it_does_not_apply(monkeypatch: Any,
                                                                  settings: dict) -> None:
    from keraslion._fastpaths import native

    text = compiled_step_text(monkeypatch, **{"kernel": True, **settings})
    assert native.TARGET not in text


def random_steps(shapes: list) -> tuple[list[np.ndarray], list[list[np.ndarray]]]:
    """Initial weights, and gradients for 4 steps spanning 7 binades (no
    subnormal numbers: whether they are flushed to zero depends on the
    thread that runs the step, not on the path)."""
    rng = np.random.default_rng(3)
    init = [rng.standard_normal(shape).astype("float32") for shape in shapes]
    grads = [[(rng.standard_normal(shape) * 10.0 ** rng.uniform(-4, 3, shape)).astype("float32")
              for shape in shapes] for _ in range(4)]
    return init, grads


def decayed_but_v0(init: list[np.ndarray]) -> tuple[Lion, list[Any]]:
    """An int8 optimizer with weight decay, not yet built, and variables made
    from `init`, the first excluded from weight decay."""
    variables = [keras.Variable(x, name=f"v{i}") for i, x in enumerate(init)]
    optimizer = Lion(1e-2, weight_decay=0.1, momentum_dtype="int8")
    optimizer.exclude_from_weight_decay(var_names=["v0"])
    return optimizer, variables


@jax_only
@pytest.mark.parametrize("shapes", [[(512, 256)], [(3, 3000)], [(40, 40), (64, 33), (7, 1000)],
                                    [(64, 33)] * 3 + [(7, 1000)] * 2,
                                    [(300, 700), (64, 33), (200, 300), (100, 1000)]],
                         ids=["whole_blocks", "short_last_block", "rows_of_a_block",
                              "several_of_a_shape", "threads_across_variables"])
def test_jax_kernel_is_xla_s_ops_bit_for_bit_op_by_op(monkeypatch: Any, shapes: list) -> None:
    """Eager `stateless_apply` (XLA's ops one by one: no fusion) gives the
    kernel's weights, codes and scales, bit for bit; weight decay excluded
    for one variable."""
    init, grads = random_steps(shapes)
    states = {}
    for kernel in (True, False):
        monkeypatch.setenv("KERASLION_NATIVE", "1" if kernel else "0")
        optimizer, variables = decayed_but_v0(init)
        optimizer.build(variables)
        weights, state = [v.value for v in variables], [v.value for v in optimizer.variables]
        for step in grads:
            weights, state = optimizer.stateless_apply(state, step, weights)
        states[kernel] = [np.asarray(x) for x in (*weights, *state)]
    for with_kernel, without in zip(states[True], states[False]):
        np.testing.assert_array_equal(with_kernel, without)


# Eight optimizers' steps of a variable each, large enough for several
# threads, in one jitted step: eight custom calls, which XLA may run at once.
MANY = """
import jax, keras, numpy as np
from keraslion import Lion
variables = [keras.Variable(np.full((512, 1024), 0.5, "float32")) for _ in range(8)]
optimizers = [Lion(1e-2, momentum_dtype="int8") for _ in variables]
for optimizer, variable in zip(optimizers, variables):
    optimizer.build([variable])

def steps(weights, states, grads):
    new = [o.stateless_apply(s, [g], [w]) for o, s, g, w in zip(optimizers, states, grads, weights)]
    return [w for ws, _ in new for w in ws], [s for _, s in new]

step = jax.jit(steps, donate_argnums=(0, 1))
weights = [v.value for v in variables]
states = [[v.value for v in o.variables] for o in optimizers]
grads = [jax.numpy.ones((512, 1024)) for _ in variables]
for _ in range(20):
    weights, states = step(weights, states, grads)
print(sorted({float(w[0, 0]) for w in weights}))
"""


@jax_only
def test_custom_calls_that_xla_runs_at_once_all_finish() -> None:
    """XLA may run custom calls at once on its thread pool (several
    optimizers' in one step), each handing blocks to the pool: each caller steps the blocks no task
    has begun, rather than wait for tasks queued behind the other calls."""
    env = {**os.environ, "PYTHONPATH": str(PACKAGE), "KERAS_BACKEND": "jax"}
    done = subprocess.run([sys.executable, "-c", MANY], env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    expected = np.float32(0.5)
    for _ in range(20):  # Every element of every variable moves by -lr each step.
        expected = np.float32(expected - np.float32(1e-2))
    assert done.stdout.split("\n")[-2] == str([float(expected)])


def run_eagerly(monkeypatch: Any, kernel: bool, function: Any) -> list[np.ndarray]:
    monkeypatch.setenv("KERASLION_NATIVE", "1" if kernel else "0")
    return [np.asarray(x) for x in function()]


@jax_only
def test_vmap_and_grad_through_the_kernel_are_those_of_xla_s_ops(monkeypatch: Any) -> None:
    """`jax.vmap` over an ensemble's states (one call per member) and
    `jax.grad` through `stateless_apply` (the derivative of the step in
    XLA's operations) give what they give without the kernel."""
    import jax

    rng = np.random.default_rng(5)
    variable = keras.Variable(rng.standard_normal((64, 512)).astype("float32"))
    optimizer = Lion(1e-2, weight_decay=0.1, momentum_dtype="int8")
    optimizer.build([variable])
    state = [jax.numpy.stack([v.value] * 3) for v in optimizer.variables]
    weights = jax.numpy.asarray(rng.standard_normal((3, 64, 512)).astype("float32"))
    grads = jax.numpy.asarray(rng.standard_normal((3, 64, 512)).astype("float32"))

    def member(state: Any, gradient: Any, weight: Any) -> Any:
        new_weights, new_state = optimizer.stateless_apply(state, [gradient], [weight])
        return [*new_weights, *new_state]

    def loss(weight: Any) -> Any:
        new_weights, _ = optimizer.stateless_apply([v.value for v in optimizer.variables],
                                                   [grads[0]], [weight])
        return (new_weights[0] ** 2).sum()

    for function in (lambda: jax.vmap(member)(state, grads, weights),
                     lambda: [jax.grad(loss)(weights[0])]):
        with_kernel = run_eagerly(monkeypatch, True, function)
        without = run_eagerly(monkeypatch, False, function)
        for a, b in zip(with_kernel, without):
            np.testing.assert_array_equal(a, b)


@jax_only
def test_with_several_devices_xla_s_ops_step_a_sharded_variable() -> None:
    """With more than one device, a variable's sharding is not known while
    tracing, and XLA would gather it to each device for the custom call:
    XLA's operations step it, and it stays sharded."""
    script = """
import jax, keras, numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from keraslion import Lion
variable = keras.Variable(np.ones((512, 512), "float32"))
optimizer = Lion(1e-2, momentum_dtype="int8")
optimizer.build([variable])
sharding = NamedSharding(Mesh(jax.devices(), ("d",)), PartitionSpec("d"))
weights = [jax.device_put(variable.value, sharding)]
step = jax.jit(lambda w, s, g: optimizer.stateless_apply(s, g, w))
new_weights, _ = step(weights, [v.value for v in optimizer.variables],
                      [jax.device_put(np.ones((512, 512), "float32"), sharding)])
print(new_weights[0].sharding.spec, "keraslion_int8_step" in step.lower(
    weights, [v.value for v in optimizer.variables], weights).as_text())
"""
    env = {**os.environ, "PYTHONPATH": str(PACKAGE), "KERAS_BACKEND": "jax",
           "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split("\n")[-2] == "PartitionSpec('d',) False"


@tf_only
@pytest.mark.parametrize("shapes", [[(512, 256)], [(3, 3000)], [(40, 40), (64, 33), (7, 1000)],
                                    [(64, 33)] * 3 + [(7, 1000)] * 2],
                         ids=["whole_blocks", "short_last_block", "rows_of_a_block",
                              "several_of_a_shape"])
def test_tensorflow_kernel_is_the_plain_path_bit_for_bit(monkeypatch: Any, shapes: list) -> None:
    """TensorFlow's fast path with the kernel gives the plain path's weights,
    codes and scales (TensorFlow's operations one by one, eagerly), bit for
    bit, with weight decay excluded for one variable; without the kernel,
    XLA's fused operations may round the decayed weights otherwise."""
    init, grads = random_steps(shapes)
    monkeypatch.setenv("KERASLION_NATIVE", "1")
    states = {}
    for fast in (True, False):
        optimizer, variables = decayed_but_v0(init)
        if not fast:
            optimizer._fast_path = None
        optimizer.build(variables)
        for step in grads:
            optimizer.apply(step, variables)
        states[fast] = [ops.convert_to_numpy(x) for x in (*variables, *optimizer.variables)]
    for with_kernel, plain in zip(states[True], states[False]):
        np.testing.assert_array_equal(with_kernel, plain)


# The float kernel (`float_step.c`: PyTorch, float32 weights with a float32
# or bfloat16 momentum) ---------------------------------------------------------

FLOAT_SHAPES = [(300, 1000), (7,), (64, 33), *[(50,)] * 40]


def edge_gradients(shapes: list) -> list[list[Any]]:
    """4 steps of gradients spanning 7 binades, the second variable's the
    edge values (zeros, subnormals, the largest float32, infinities and
    NaN), given as float32 tensors, a transposed (not contiguous) tensor,
    a float64 NumPy array and bfloat16 tensors, step by step."""
    import torch

    _, grads = random_steps(shapes)
    for step in grads:
        step[1][:] = [0.0, -0.0, 1e-40, -3e38, np.inf, -np.inf, np.nan]
    given = []
    for i, step in enumerate(grads):
        tensors = [torch.from_numpy(g.copy()) for g in step]
        if i == 1:
            tensors[2] = torch.from_numpy(step[2].T.copy()).T
        elif i == 2:
            tensors[0] = step[0].astype("float64")
        elif i == 3:
            tensors = [t.to(torch.bfloat16) for t in tensors]
        given.append(tensors)
    return given


@torch_only
@pytest.mark.parametrize("momentum_dtype", [None, "bfloat16"], ids=["float32", "bfloat16"])
def test_float_kernel_is_the_plain_path_bit_for_bit(monkeypatch: Any, momentum_dtype: Any) -> None:
    """PyTorch's fast path steps float32 weights with a float32 or bfloat16
    momentum in C, giving the plain path's weights and momenta bit for bit:
    edge gradients, weight decay with one variable excluded, many small
    variables, a large one cut between threads (three, on any machine), and
    gradients of other dtypes and layouts."""
    from keraslion._fastpaths import native
    from keraslion._fastpaths import torch as torch_path

    if native.float_library() is None:
        pytest.skip("no C compiler")
    monkeypatch.setattr(native, "threads_for", lambda elements: 3)
    calls = []
    step_in_c = torch_path._update_in_c
    monkeypatch.setattr(torch_path, "_update_in_c",
                        lambda *arguments: calls.append(1) or step_in_c(*arguments))
    init, _ = random_steps(FLOAT_SHAPES)
    grads = edge_gradients(FLOAT_SHAPES)
    states = {}
    for fast in (True, False):
        variables = [keras.Variable(x, name=f"v{i}") for i, x in enumerate(init)]
        optimizer = Lion(1e-2, weight_decay=0.1, momentum_dtype=momentum_dtype)
        optimizer.exclude_from_weight_decay(var_names=["v0"])
        optimizer.build(variables)
        if not fast:
            optimizer._fast_path = None
        for step in grads:
            optimizer.apply(step, variables)
        states[fast] = [ops.convert_to_numpy(ops.cast(x, "float32"))
                        for x in (*variables, *optimizer.variables)]
    assert len(calls) == len(grads)
    for in_c, plain in zip(states[True], states[False]):
        np.testing.assert_array_equal(in_c, plain)  # (NaN equals NaN here)


FLOAT_STEPS = """
import hashlib, keras, numpy as np
from keraslion import Lion
from keraslion._fastpaths import native
rng = np.random.default_rng(0)
variables = [keras.Variable(rng.standard_normal((300, 1000)).astype("float32"))]
optimizer = Lion(1e-2, weight_decay=0.1, momentum_dtype="bfloat16")
optimizer.build(variables)
for _ in range(3):
    optimizer.apply([rng.standard_normal((300, 1000)).astype("float32")], variables)
np.save("state.npy", np.stack([keras.ops.convert_to_numpy(x).astype("float32")
                               for x in [*variables, *optimizer._momentums]]))
print(native.float_library() is not None)
"""


@torch_only
def test_float_steps_without_a_compiler_or_when_turned_off_are_within_a_rounding(
        tmp_path: Path) -> None:
    """No compiler, or `KERASLION_NATIVE=0`: PyTorch's blocked operations step
    float32 weights with a bfloat16 momentum, with a `KernelWarning` that
    names the float kernel (but when turned off), within a rounding of the
    kernel's weights and momenta (they fuse a multiply-add)."""
    def state(name: str, **environment: str) -> tuple[bool, str, np.ndarray]:
        directory = tmp_path / name
        directory.mkdir()
        env = {**os.environ, "PYTHONPATH": str(PACKAGE), "KERAS_BACKEND": "torch",
               "KERASLION_CACHE_DIR": str(directory / "cache"), **environment}
        done = subprocess.run([sys.executable, "-c", FLOAT_STEPS], env=env, cwd=directory,
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        return done.stdout.split()[-1] == "True", done.stderr, np.load(directory / "state.npy")

    built, built_err, in_c = state("built")
    no_compiler, no_compiler_err, without = state("none", CC="/nonexistent/cc")
    turned_off, turned_off_err, off = state("off", KERASLION_NATIVE="0")
    assert built and not no_compiler
    assert "KernelWarning" not in built_err + turned_off_err
    assert "KernelWarning" in no_compiler_err and "float_step.c" in no_compiler_err
    np.testing.assert_array_equal(without, off)
    # A weight's ulp (the step moves each by about lr); a bfloat16 momentum's
    # (2 ulps after 3 steps: one rounded otherwise carries into the next).
    np.testing.assert_allclose(in_c[0], without[0], rtol=0, atol=2e-6)
    np.testing.assert_allclose(in_c[1], without[1], rtol=2**-6)
    assert np.mean(in_c != without) < 0.1


@torch_only
def test_the_python_package_ships_every_source_the_kernels_are_built_from(
        tmp_path: Path) -> None:
    """pip's wheel of `inst/python` holds the C and C++ sources and headers
    that `native.py` compiles on first use (a header left out of the
    package data would leave every kernel unbuildable, with a warning)."""
    import zipfile

    # Built from a copy: setuptools leaves its build directories beside the sources.
    copy = shutil.copytree(PACKAGE, tmp_path / "python",
                           ignore=shutil.ignore_patterns("__pycache__", "build", "*.egg-info"))
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps",
                            "--no-build-isolation", "-q", "-w", str(tmp_path / "wheel"),
                            str(copy)], capture_output=True, text=True, timeout=300)
    if built.returncode != 0:
        pytest.skip(f"no wheel built here: {built.stderr[-300:]}")
    [wheel] = (tmp_path / "wheel").glob("*.whl")
    shipped = set(zipfile.ZipFile(wheel).namelist())
    sources = [path for path in (PACKAGE / "keraslion" / "_fastpaths").iterdir()
               if path.suffix in (".c", ".cc", ".h")]
    assert {path.suffix for path in sources} == {".c", ".cc", ".h"}
    missing = [path.name for path in sources
               if f"keraslion/_fastpaths/{path.name}" not in shipped]
    assert not missing


@torch_only
@pytest.mark.parametrize("momentum_dtype", [None, "bfloat16", "int8"])
def test_kernels_flush_subnormals_as_the_calling_thread_does(monkeypatch: Any,
                                                             momentum_dtype: Any) -> None:
    """`torch.set_flush_denormal` sets its caller's mode only: the kernels'
    pool threads (three here, on any machine) step in the caller's mode
    at every step, as the plain path computes, with the mode turned on
    and off between steps after the pool started."""
    import torch

    from keraslion._fastpaths import native

    library = native.int8_library() if momentum_dtype == "int8" else native.float_library()
    if library is None:
        pytest.skip("no C compiler")
    if not torch.set_flush_denormal(False):
        pytest.skip("no flush-to-zero on this CPU")
    monkeypatch.setattr(native, "threads_for", lambda elements: 3)
    # (1 - beta) * g is subnormal (1e-38) for each beta: c and m' flush to 0 or not.
    gradient = np.full((3, 1024), 2e-38, "float32")
    states = {}
    try:
        for fast in (True, False):
            variable = keras.Variable(np.ones((3, 1024), "float32"))
            optimizer = Lion(1e-2, beta_1=0.5, beta_2=0.5, momentum_dtype=momentum_dtype)
            optimizer.build([variable])
            if not fast:
                optimizer._fast_path = None
            states[fast] = []
            for flush in (False, True, False, True):
                torch.set_flush_denormal(flush)
                optimizer.apply([gradient], [variable])
                states[fast].append(ops.convert_to_numpy(variable).copy())
    finally:
        torch.set_flush_denormal(False)
    for with_kernel, plain in zip(states[True], states[False]):
        np.testing.assert_array_equal(with_kernel, plain)
    # The mode mattered: flushed, c is 0 and the weights stay; else they move.
    plain = states[False]
    assert np.array_equal(plain[0], plain[1]) and not np.array_equal(plain[1], plain[2])
