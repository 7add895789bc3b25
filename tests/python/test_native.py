"""The int8 step's C kernel (`keraslion/_fastpaths/native.py`): how it is
built and cached, and what runs without it. Its arithmetic is checked
against the plain path in test_int8.py and in the path-parity matrix."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

BACKEND = os.environ.get("KERAS_BACKEND", "tensorflow")
pytestmark = pytest.mark.skipif(BACKEND != "torch", reason="the kernel is PyTorch's")
PACKAGE = Path(__file__).resolve().parents[2] / "inst" / "python"

# A few int8 steps of a 300x1000 variable; prints whether the kernel was
# built, then a digest of the weights, codes and scales.
STEPS = """
import hashlib, keras, numpy as np
from keraslion import Lion
from keraslion._fastpaths import native
rng = np.random.default_rng(0)
variable = keras.Variable(rng.standard_normal((300, 1000)).astype("float32"))
optimizer = Lion(1e-2, weight_decay=0.1, momentum_dtype="int8")
optimizer.build([variable])
for _ in range(3):
    optimizer.apply([rng.standard_normal((300, 1000)).astype("float32")], [variable])
digest = hashlib.sha256()
for x in [variable, *optimizer.variables]:
    digest.update(keras.ops.convert_to_numpy(x).tobytes())
print(native.int8_step() is not None, digest.hexdigest())
"""


def steps_in_a_new_process(**environment: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(PACKAGE), "KERAS_BACKEND": "torch", **environment}
    return subprocess.Popen([sys.executable, "-c", STEPS], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def result(process: subprocess.Popen) -> tuple[bool, str]:
    out, err = process.communicate(timeout=300)
    assert process.returncode == 0, err
    built, digest = out.split()
    return built == "True", digest


def test_processes_building_at_once_share_one_library_and_agree(tmp_path: Path) -> None:
    """Four processes building into one empty cache directory each get a
    whole library (no partial files are left), and step identically."""
    if shutil.which(os.environ.get("CC", "cc")) is None:
        pytest.skip("no C compiler")
    processes = [steps_in_a_new_process(KERASLION_CACHE_DIR=str(tmp_path)) for _ in range(4)]
    results = [result(p) for p in processes]
    assert all(built for built, _ in results)
    assert len({digest for _, digest in results}) == 1
    assert [p.suffix for p in tmp_path.iterdir()] == [".so" if sys.platform != "win32" else ".dll"]


def test_without_a_compiler_or_when_turned_off_the_step_is_the_same(tmp_path: Path) -> None:
    """No compiler (and no library cached), or `KERASLION_NATIVE=0`:
    PyTorch's piecewise step runs, with the kernel's weights, codes and scales."""
    built = result(steps_in_a_new_process(KERASLION_CACHE_DIR=str(tmp_path / "a")))
    no_compiler = result(steps_in_a_new_process(KERASLION_CACHE_DIR=str(tmp_path / "b"),
                                                CC="/nonexistent/cc"))
    turned_off = result(steps_in_a_new_process(KERASLION_NATIVE="0"))
    assert no_compiler[0] is False
    assert built[1] == no_compiler[1] == turned_off[1]


def test_a_cache_directory_that_cannot_be_made_falls_back_to_the_temporary_one(
        tmp_path: Path) -> None:
    if shutil.which(os.environ.get("CC", "cc")) is None:
        pytest.skip("no C compiler")
    blocker = tmp_path / "a file"
    blocker.write_text("")
    built, _ = result(steps_in_a_new_process(KERASLION_CACHE_DIR=str(blocker / "cache")))
    assert built
