"""Test accuracy and loss with float32 and int8 momentum on the backend in
KERAS_BACKEND: the lion-vs-adamw vignette's digits task (scikit-learn's
bundled 8 x 8 digits, a quarter of each class held out; MLP 64-128-10; Lion
lr 1e-3, weight decay 0.03; 20 epochs of batch 64), mean ± sd over 3 seeds.

    KERAS_BACKEND=torch python bench/int8_quality.py
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "inst" / "python"))

import keras  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402

from keraslion import Lion  # noqa: E402


def main() -> None:
    digits = load_digits()
    x, y = (digits.data / 16).astype("float32"), digits.target.astype("int32")
    rng = np.random.default_rng(7)
    test = np.sort(np.concatenate([
        rng.choice(np.flatnonzero(y == k), round((y == k).sum() / 4), replace=False)
        for k in range(10)]))
    train = np.setdiff1d(np.arange(len(y)), test)
    for momentum_dtype in (None, "int8"):
        scores = []
        for seed in (1, 2, 3):
            keras.utils.set_random_seed(seed)
            model = keras.Sequential([keras.Input((64,)),
                                      keras.layers.Dense(128, activation="relu"),
                                      keras.layers.Dense(10, activation="softmax")])
            model.compile(optimizer=Lion(learning_rate=1e-3, weight_decay=0.03,
                                         momentum_dtype=momentum_dtype),
                          loss="sparse_categorical_crossentropy", metrics=["accuracy"])
            model.fit(x[train], y[train], epochs=20, batch_size=64, verbose=0)
            loss, accuracy = model.evaluate(x[test], y[test], verbose=0)
            scores.append((accuracy, loss))
        a = np.array(scores)
        print(f"{os.environ.get('KERAS_BACKEND', 'tensorflow')} {momentum_dtype or 'float32'}: "
              f"accuracy {a[:, 0].mean():.3f} ± {a[:, 0].std(ddof=1):.3f}, "
              f"loss {a[:, 1].mean():.3f} ± {a[:, 1].std(ddof=1):.3f}")


if __name__ == "__main__":
    main()
