"""Helper for test_path_parity.py (not a test): runs (path, case) pairs of
the path-parity matrix in a fresh process, for what must be set up before
the backend starts:

    python path_parity_worker.py MODE REQUESTS.json OUT.pkl

- `jax_x64`: JAX with `jax_enable_x64`, for the cases with float64 weights
  or momentum (set before JAX is imported);
- `tf_mirrored`: TensorFlow with its CPU split into 2 logical devices, for
  the `mirrored` path (set before TensorFlow initializes).

REQUESTS.json lists [path, case id] pairs; OUT.pkl gets, for each, what the
path did (as plain data) or the traceback of its error, for the test to judge.
"""

import dataclasses
import json
import os
import pickle
import sys
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
MODE, REQUESTS, OUT = sys.argv[1:4]
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
if MODE == "jax_x64":
    os.environ["KERAS_BACKEND"] = "jax"
    os.environ["JAX_ENABLE_X64"] = "1"
elif MODE == "tf_mirrored":
    os.environ["KERAS_BACKEND"] = "tensorflow"
    import tensorflow as tf

    tf.config.set_logical_device_configuration(
        tf.config.list_physical_devices("CPU")[0],
        [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()])
else:
    raise SystemExit(f"unknown mode {MODE!r}")
sys.path[:0] = [str(HERE.parents[1] / "inst" / "python"), str(HERE)]

import test_path_parity as matrix  # noqa: E402


def main() -> None:
    results = {}
    for path, case_id in json.loads(Path(REQUESTS).read_text()):
        try:
            run = matrix.run_case(path, matrix.CASES_BY_ID[case_id])
            results[(path, case_id)] = dataclasses.asdict(run)
        except Exception:
            results[(path, case_id)] = traceback.format_exc()
        print(path, case_id, "error" if isinstance(results[(path, case_id)], str) else "ok",
              flush=True)
    with open(OUT, "wb") as stream:
        pickle.dump(results, stream)


if __name__ == "__main__":
    main()
