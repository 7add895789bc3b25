"""Loading a Lion's saved variables by role and variable path, not by index.

Keras saves an optimizer's variables by index only ("0", "1", ...) and its
own `load_own_variables` skips them all, with one warning, when their
count differs from the optimizer's. Options such as `skip_nonfinite` or
`use_ema` add or drop variables, so a changed option lost the step count and
every momentum. The store is left as Keras writes it (so that files of
Keras's Lion and of keraslion load into either); instead the saved layout
is inferred from the count, shapes and kinds (int or float) of the entries.

An optimizer's variables are, in order: the iteration count (an int
scalar), the learning rate (a float scalar; absent for a schedule or a
callable), then per trainable variable the moving averages (`use_ema`),
the gradient accumulators (`gradient_accumulation_steps`) and the
momentums, and last keraslion's count of skipped steps (`skip_nonfinite`).
Keras's Lion, and keraslion before 0.3.0, also saved a `keras.Variable` given
as beta_1, beta_2 or weight_decay: after the learning rate, or last if set
after the build. Such entries are read and skipped with a `StateWarning`
(a hyperparameter's value is its owner's, not state; but a scalar weight's
momentum looks the same, where the model lost that weight).
An int8 momentum (`int8.pack`: codes and exponent bytes in one variable)
loads as it was saved into an int8 momentum and decoded into a float one
(a float momentum loads into int8 codes rounded to the nearest).
Another optimizer's checkpoint with two values per variable side by side,
one never negative (Adam's momentum and velocity), is said to be one and
loads nothing; read as a Lion's, a velocity became a momentum.
"""

from __future__ import annotations

import itertools
import sys
import threading
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import keras
import numpy as np

from . import int8


class StateWarning(UserWarning):
    """Optimizer state in a checkpoint was dropped, or could not be loaded."""


# Shown every time: a repeated load drops state again. Appended, so that a
# user's own filter for it (added at the front) still wins.
warnings.filterwarnings("always", category=StateWarning, append=True)

# A slot: a role and, for per-variable roles, the index of the trainable
# variable (None in a saved slot: a variable this model does not have).
Slot = tuple[str, int | None]
SCALARS = ("iterations", "learning_rate", "hyperparameter", "nonfinite_steps")
PER_VARIABLE = ("average", "accumulator", "momentum")
DESCRIPTIONS = {
    "iterations": "the iteration count",
    "learning_rate": "the learning rate",
    "nonfinite_steps": "the count of skipped non-finite steps",
    "average": "the moving average",
    "accumulator": "the gradient accumulator",
    "momentum": "the momentum",
}
# Why saved state has no place here, by its role.
NO_PLACE = {
    "learning_rate": "the learning rate here is a schedule or a callable",
    "nonfinite_steps": "skip_nonfinite is off here",
    "average": "use_ema is off here",
    "accumulator": "gradient_accumulation_steps is off here",
    "variable": "this model has no variable of that shape in that place",
}
#: Set on a Lion by the `LossScaleOptimizer` around it when it loaded a
#: checkpoint saved without mixed precision into the Lion: the Lion's own
#: (empty) part of the checkpoint, loaded next, is then skipped.
LOADED_BY_WRAPPER = "_keraslion_loaded_by_wrapper"
AMBIGUOUS_LAYOUT = "its layout can be read in more than one way, each loading different variables"
HOW_TO_ALLOW = (
    "To load what matches and start the rest fresh, pass `skip_mismatch=True` to "
    "`model.load_weights()` (from R: `load_model_weights(model, filepath, "
    "skip_mismatch = TRUE)`).")


@dataclass(frozen=True)
class Entry:
    """One saved variable: its key in the store, shape, kind and value."""

    key: str
    value: np.ndarray
    # An int8 momentum as saved (`int8.pack`; `value` is what it holds).
    packed: np.ndarray | None = None

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.value.shape)

    @property
    def kind(self) -> str:
        dtype = keras.backend.standardize_dtype(self.value.dtype)
        return "int" if "int" in dtype else "float" if "float" in dtype else dtype

    def is_scalar(self, kind: str) -> bool:
        return self.shape == () and self.kind == kind


@dataclass(frozen=True)
class Options:
    """Which optional variables an optimizer has (or a checkpoint's had)."""

    learning_rate: bool
    ema: bool
    accumulation: bool
    counter: bool

    def agreement(self, other: Options) -> int:
        return sum(a == b for a, b in zip(vars(self).values(), vars(other).values()))


@dataclass(frozen=True)
class Reading:
    """One interpretation of the store: the slot of each entry."""

    options: Options
    slots: tuple[Slot, ...]
    rank: int  # 0: same variables; 1: a model with more or fewer; 2: shapes differ
    ambiguous: bool = False  # which variables the entries belong to is unclear


@dataclass
class Plan:
    """What loading does, decided before anything is assigned."""

    loads: list[tuple[keras.Variable, Entry]] = field(default_factory=list)
    fresh: list[tuple[Slot, keras.Variable]] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)  # warned about
    # Errors unless allowed; each with what allowing it does.
    problems: list[tuple[str, str]] = field(default_factory=list)


def load_own_variables(optimizer: Any, store: Any) -> None:
    """Loads `store`, written by Keras's `save_own_variables`, into `optimizer`.

    What matches is loaded, what the optimizer's options add starts fresh,
    and saved state it has no place for is dropped with a `StateWarning`.
    What the checkpoint lacks, or what cannot be matched, raises a
    `ValueError` and loads nothing, unless Keras was asked to skip
    mismatches (`load_weights(..., skip_mismatch=True)`): then it is
    warned about and starts fresh.
    """
    if optimizer.__dict__.pop(LOADED_BY_WRAPPER, False) and not len(store.keys()):
        return  # loaded already, from a checkpoint saved without mixed precision
    if not optimizer.built and unpickling():
        start_copy_afresh(optimizer, store)
        return
    own = own_slots(optimizer)
    if own is None:
        load_by_index(optimizer, store)
        return
    allowed = keras_skips_mismatch()
    plan = saved_under_mixed_precision(optimizer, own, store) or make_plan(optimizer, own, store)
    if plan.problems and not allowed:
        raise ValueError(
            f"Cannot load the state of optimizer '{optimizer.name}' from the checkpoint: "
            f"{'; '.join(problem for problem, _ in plan.problems)}. Nothing was loaded into "
            f"the optimizer. {HOW_TO_ALLOW}")
    notes = plan.dropped + [f"{problem}: {outcome}, as `skip_mismatch=True` allows"
                            for problem, outcome in plan.problems]
    if notes:
        # Warned before anything is assigned: a warning turned into an error loads nothing.
        warnings.warn(
            f"Loading the state of optimizer '{optimizer.name}': {'; '.join(notes)}.",
            StateWarning, stacklevel=3)
    for variable, entry in plan.loads:
        if variable.dtype != "int8":
            variable.assign(into_dtype(entry.value, variable.dtype))
        elif entry.packed is not None:
            variable.assign(entry.packed)
        else:
            # Into int8 from a float momentum: rounded to the nearest code
            # (noise of half a step), not at random.
            noise = keras.ops.full(entry.shape, 1 << (int8.NOISE_BITS - 1), "int32")
            variable.assign(int8.pack(*int8.encode(
                keras.ops.convert_to_tensor(entry.value, "float32"), noise)))
    for (role, index), variable in plan.fresh:
        variable.assign(fresh_value(optimizer, role, index, variable))


def load_by_index(optimizer: Any, store: Any) -> None:
    """A subclass with variables of its own: loaded by index, as Keras does,
    but a mismatch is a `StateWarning` (Keras's plain warning may not reach R)."""
    variables = optimizer._saved_variables()
    if len(store.keys()) != len(variables):
        warnings.warn(
            f"Loading the state of optimizer '{optimizer.name}': dropped all of it, as it has "
            f"{len(variables)} variables and the checkpoint {len(store.keys())}.",
            StateWarning, stacklevel=3)
        return
    for i, variable in enumerate(variables):
        variable.assign(store[str(i)])


def into_dtype(value: np.ndarray, dtype: Any) -> np.ndarray:
    """A saved value for a variable of `dtype`: into float16 (a momentum of
    `momentum_dtype="float16"`, saved wider), it saturates at +-65504 as the
    step stores it, instead of overflowing to Inf."""
    if keras.backend.standardize_dtype(dtype) != "float16" or value.dtype == np.float16:
        return value
    largest = float(np.finfo(np.float16).max)
    return np.where(np.abs(value) > largest, np.sign(value) * largest, value).astype(np.float16)


#: How Keras's `LossScaleOptimizer` (mixed precision) begins its store, int
#: or float scalars: iteration count, learning rate, step counter, loss scale.
LOSS_SCALE_INTEGERS = (True, False, True, False)


def saved_by_a_loss_scale_optimizer(store: Any) -> bool:
    """Whether the store is a built `LossScaleOptimizer`'s: four int or float
    scalars as it begins (a Lion's has int scalars only first and last),
    then its Lion's, which begins with its iteration count, an int scalar."""
    size = len(LOSS_SCALE_INTEGERS)
    return (len(store.keys()) > size and begins_as_a_loss_scale_optimizers(store)
            and _scalar_kinds(store, range(size, size + 1)) == ["int"])


def begins_as_a_loss_scale_optimizers(store: Any) -> bool:
    """Whether the store's first four entries are int, float, int and float scalars."""
    size = len(LOSS_SCALE_INTEGERS)
    keys = len(store.keys())
    if keys < size or {str(key) for key in store.keys()} != {str(i) for i in range(keys)}:
        return False
    return _scalar_kinds(store, range(size)) == [
        "int" if integer else "float" for integer in LOSS_SCALE_INTEGERS]


def _scalar_kinds(store: Any, keys: range) -> list[str | None]:
    """Of each entry, "int" or "float" for a scalar of that kind, else None."""
    values = [np.asarray(store[str(i)]) for i in keys]
    return [None if value.shape != () else "int" if value.dtype.kind in "iu"
            else "float" if value.dtype.kind == "f" else None for value in values]


def saved_by_an_unbuilt_loss_scale_optimizer(store: Any) -> bool:
    """Whether the store is that of a `LossScaleOptimizer` saved before
    training: its iteration count (0) and learning rate (always 0), then
    its unbuilt Lion's: iteration count (0), then float scalars alone (the
    learning rate unless a schedule or a callable; Keras's Lion's variables
    given as hyperparameters). No step counter or loss scale yet: the
    wrapper has nothing to load."""
    keys = len(store.keys())
    if keys < 3 or {str(key) for key in store.keys()} != {str(i) for i in range(keys)}:
        return False
    return (_scalar_kinds(store, range(keys)) == ["int", "float", "int"] + ["float"] * (keys - 3)
            and int(np.asarray(store["0"])) == 0 and float(np.asarray(store["1"])) == 0.0
            and int(np.asarray(store["2"])) == 0)


def saved_under_mixed_precision(optimizer: Any, own: dict[Slot, keras.Variable],
                                store: Any) -> Plan | None:
    """The plan for a Lion's checkpoint saved inside a `LossScaleOptimizer`
    (under mixed precision) and loaded without one: the wrapper's store, its
    own variables first, then the Lion's, which load as the Lion's (the
    wrapper's, with no place here, dropped with a warning). None for another
    store."""
    if saved_by_an_unbuilt_loss_scale_optimizer(store):
        # Before training: the wrapper's iteration count and learning rate, then the Lion's.
        return make_plan(optimizer, own,
                         {str(i - 2): store[str(i)] for i in range(2, len(store.keys()))})
    if not saved_by_a_loss_scale_optimizer(store):
        return None
    size = len(LOSS_SCALE_INTEGERS)
    keys = len(store.keys())
    plan = make_plan(optimizer, own, {str(i - size): store[str(i)] for i in range(size, keys)})
    plan.dropped.insert(0, (
        f"dropped the step counter ({int(np.asarray(store['2']))}) and loss scale "
        f"({float(np.asarray(store['3'])):g}) of the LossScaleOptimizer it was saved in "
        "(mixed precision): this optimizer has none, and no loss scaling (a model compiled "
        "under a float32 dtype policy: set the `mixed_float16` policy before loading or "
        "copying the model to keep them)"))
    return plan


def unpickling() -> bool:
    """Whether Keras is unpickling, or deep-copying, an object that holds
    this optimizer (it saves the object, then loads a new one from the file)."""
    unpickle = getattr(keras.optimizers.Optimizer._unpickle_model, "__func__", None)
    if unpickle is None:
        return False
    frame = sys._getframe(1)
    while frame is not None:
        if frame.f_code is unpickle.__code__:
            return True
        frame = frame.f_back
    return False


def start_copy_afresh(optimizer: Any, store: Any) -> None:
    """A copy of a built optimizer, made on its own, is not built: it has no
    place for the state, and starts afresh with its options (as Keras's
    own optimizers do); said where the state had steps or skipped steps
    (the saved int scalars: the iteration count first), which the copy loses."""
    values = [np.asarray(store[str(i)]) for i in range(len(store.keys()))]
    steps, *skipped = [int(v) for v in values if v.shape == () and v.dtype.kind in "iu"] or [0]
    if steps or any(skipped):
        taken = f"{steps} step{'' if steps == 1 else 's'}" + (
            f" and {sum(skipped)} skipped" if any(skipped) else "")
        warnings.warn(
            f"The copy of optimizer '{optimizer.name}' is not built, so it starts afresh, "
            f"without the state saved with it after {taken} (momentums and the like): "
            "only a copy of the model keeps its optimizer's state (`copy.deepcopy(model)`, "
            "`pickle.dumps(model)`; from R, `reticulate::py_save_object(model, file)`).",
            StateWarning, stacklevel=3)


def keras_skips_mismatch() -> bool:
    """Whether the enclosing Keras load was given `skip_mismatch=True`.

    Keras passes it to `_load_state`, which calls `load_own_variables`
    without it; strict when no such frame is found.
    """
    frame = sys._getframe(1)
    while frame is not None:
        if (frame.f_code.co_name == "_load_state"
                and frame.f_globals.get("__name__", "").startswith("keras")):
            return bool(frame.f_locals.get("skip_mismatch", False))
        frame = frame.f_back
    return False


def own_slots(optimizer: Any) -> dict[Slot, keras.Variable] | None:
    """This optimizer's variables by slot, in order; None if they are not all known."""
    slots: dict[Slot, keras.Variable] = {("iterations", None): optimizer._iterations}
    if isinstance(optimizer._learning_rate, keras.Variable):
        slots["learning_rate", None] = optimizer._learning_rate
    if optimizer.built:
        groups = [("average", optimizer._model_variables_moving_average if optimizer.use_ema
                   else []),
                  ("accumulator", optimizer._accumulated_gradients
                   if optimizer.gradient_accumulation_steps else []),
                  ("momentum", optimizer._momentums)]
        for role, variables in groups:
            slots.update(((role, j), v) for j, v in enumerate(variables) if v is not None)
        if optimizer.skip_nonfinite:
            slots["nonfinite_steps", None] = optimizer._nonfinite_steps
    if [id(v) for v in slots.values()] != [id(v) for v in optimizer._saved_variables()]:
        return None
    return slots


def own_options(optimizer: Any) -> Options:
    return Options(learning_rate=isinstance(optimizer._learning_rate, keras.Variable),
                   ema=bool(optimizer.use_ema),
                   accumulation=bool(optimizer.gradient_accumulation_steps),
                   counter=bool(optimizer.skip_nonfinite))


def read_store(store: Any) -> list[Entry] | None:
    keys = {str(key) for key in store.keys()}
    if keys != {str(i) for i in range(len(keys))}:
        return None
    return [_entry(str(i), np.asarray(store[str(i)])) for i in range(len(keys))]


def held_shape(variable: keras.Variable) -> tuple[int, ...]:
    """The shape of what a variable holds: an int8 momentum's, its variable's."""
    shape = tuple(variable.shape)
    return int8.unpacked_shape(shape) if variable.dtype == "int8" else shape


def _entry(key: str, value: np.ndarray) -> Entry:
    """A saved variable; int8 momentums (the only int8 entries that are not
    scalars) read as the momentum they hold, in the variable's shape."""
    if value.dtype != np.int8 or not value.shape or not int8.is_quantized(
            int8.unpacked_shape(value.shape)):
        return Entry(key, value)
    momentum = int8.decode(*int8.unpack(keras.ops.convert_to_tensor(value)))
    return Entry(key, keras.ops.convert_to_numpy(momentum), value)


def make_plan(optimizer: Any, own: dict[Slot, keras.Variable], store: Any) -> Plan:
    plan = Plan()
    entries = read_store(store)
    if entries is None:
        plan.problems.append((
            f"the checkpoint's entries {sorted(store.keys())} are not those Keras writes for "
            "an optimizer", "nothing was loaded"))
        return plan
    if not entries:
        # Nothing saved (a model saved without an optimizer): only a fresh,
        # unbuilt optimizer loses nothing by it.
        fresh = not optimizer.built and int(keras.ops.convert_to_numpy(optimizer._iterations)) == 0
        if not fresh:
            plan.problems.append((
                "the checkpoint holds no optimizer state (no iteration count, no momentums)",
                "the optimizer's state was left as it is"))
        return plan
    trainables = list(optimizer._trainable_variables) if optimizer.built else []
    readings = list(candidate_readings(entries, trainables))
    per_variable = another_optimizers(optimizer, readings, entries, trainables)
    if per_variable:
        # Keras skips such a checkpoint too (another count of variables); read
        # as a Lion's, an average of squared gradients would become a momentum.
        plan.dropped.append(
            f"the checkpoint is another optimizer's, not a Lion's: it holds {per_variable} "
            "values per trainable variable, one of them never negative (a sum or average of "
            "squared gradients, such as Adam's and AdamW's velocity), where a Lion saves one "
            "momentum. None of it was loaded, and the optimizer's state was left as it is")
        return plan
    best, ambiguity, doubt = choose(readings, own_options(optimizer), own, entries, trainables,
                                    optimizer.gradient_accumulation_steps or 1)
    if not best:
        plan.problems.append((
            f"{ambiguity or 'its layout fits none this optimizer could have saved'} "
            f"({len(entries)} saved variables, of shapes "
            f"{summary([str(e.shape) for e in entries], 8)}, for {len(trainables)} trainable "
            "variables)", "nothing was loaded"))
        return plan

    reading = best[0]
    if not optimizer.built and any(role not in ("iterations", "learning_rate", "hyperparameter")
                                   for role, _ in reading.slots):
        plan.problems.append((
            f"the optimizer is not built, so it has no place yet for the checkpoint's "
            f"{len(entries)} saved variables (momentums and the like); build it first, with "
            "`optimizer.build(model.trainable_variables)` (from R: "
            "`model$optimizer$build(model$trainable_variables)`), then load",
            "only the iteration count and learning rate were loaded"))
    saved = reading.options
    saved_roles = {"iterations", "momentum", *(["average"] * saved.ema),
                   *(["accumulator"] * saved.accumulation), *(["nonfinite_steps"] * saved.counter)}
    dropped: dict[tuple[str, str], list[str]] = {}
    skipped: list[str] = []  # saved hyperparameter variables
    for i, (entry, slot) in enumerate(zip(entries, reading.slots)):
        variable = own.get(slot)
        if slot[0] == "hyperparameter":
            skipped.append(f"{float(entry.value):.6g}")
            continue
        if variable is None:
            if optimizer.built or slot[0] == "learning_rate":  # Else said once, above.
                # Tied readings may differ in the role (see `choose`).
                roles = list(dict.fromkeys(r.slots[i][0] for r in best))
                reason = " and ".join(NO_PLACE["variable" if slot[1] is None and role in
                                               PER_VARIABLE else role] for role in roles)
                what, of = describe_saved(roles, slot, entry, trainables)
                dropped.setdefault((what, reason), []).extend([of] if of else [])
        elif held_shape(variable) != entry.shape:
            plan.problems.append((
                f"{describe(slot, trainables)} has shape {held_shape(variable)} here but "
                f"{entry.shape} in the checkpoint", "it starts fresh"))
            plan.fresh.append((slot, variable))
        else:
            plan.loads.append((variable, entry))
    plan.dropped = [f"dropped {what}{f' of {summary(of, 4)}' if of else ''}: {reason}"
                    for (what, reason), of in dropped.items()]
    if doubt:
        plan.dropped.append(doubt)
    if skipped:
        # Said, as the reading may be wrong: a scalar weight's momentum looks alike.
        plan.dropped.append(
            f"skipped the saved scalars {', '.join(skipped)}, read as variables given as "
            "beta_1, beta_2 or weight_decay (which Keras's Lion and keraslion 0.2 saved; they "
            "are not state), or else momentums of scalar weights this model does not have")

    missing = [slot for slot in own if slot not in reading.slots and slot[0] != "learning_rate"]
    lacked = [slot for slot in missing if slot[0] in saved_roles]
    unbuilt = all(role in SCALARS for role, _ in reading.slots)
    if unbuilt and int(entries[0].value) == 0:
        # Saved before its first step (a model compiled, never trained): its
        # state was what a fresh optimizer's is, so nothing is lacking; but
        # this optimizer's own steps are replaced by it, which Keras's
        # optimizers would not do (they skip such a checkpoint, with a warning).
        lacked = []
        steps = int(keras.ops.convert_to_numpy(optimizer._iterations))
        if steps and missing:
            taken = f"{steps} step{'' if steps == 1 else 's'}"
            plan.dropped.append(
                "the checkpoint's optimizer had taken no step (it was saved before "
                f"training), so this optimizer's state after {taken} (momentums and the "
                "like) starts fresh, as the checkpoint's was")
    if lacked:
        plan.problems.append((
            f"the checkpoint lacks {summary([describe(s, trainables) for s in lacked], 6)} ("
            f"{'its optimizer was not built' if unbuilt else 'its model had other variables'})",
            "these start fresh and the rest was loaded"))
    plan.fresh.extend((slot, own[slot]) for slot in missing)
    return plan


def candidate_readings(entries: list[Entry], trainables: list[Any]) -> Iterator[Reading]:
    """Every reading of the entries consistent with their count, kinds and shapes."""
    shapes = [tuple(v.shape) for v in trainables]
    stepped = [j for j, v in enumerate(trainables)
               if not getattr(v, "overwrite_with_gradient", False)]
    # Saved hyperparameters lie after the learning rate (given or set before
    # the build) or after everything (set after it).
    for *flags, before, after in itertools.product(*[(True, False)] * 4, range(4), range(4)):
        options = Options(*flags)
        learning_rate, ema, accumulation, counter = flags
        head = 1 + learning_rate + before
        body = entries[head:len(entries) - counter - after]
        if (before + after > 3 or len(entries) < head + counter + after
                or not scalars_fit(entries, options, before, after)):
            continue
        if any(e.kind != "float" for e in body):
            continue
        head_slots: list[Slot] = ([("iterations", None)] + [("learning_rate", None)] * learning_rate
                                  + [("hyperparameter", None)] * before)
        tail_slots: list[Slot] = ([("nonfinite_steps", None)] * counter
                                  + [("hyperparameter", None)] * after)
        roles = [role for role, on in zip(PER_VARIABLE, (ema, accumulation, True)) if on]
        # The checkpoint's model had these very variables (EMA and momentum
        # skip those overwritten with their gradient, accumulators do not).
        full = [(role, j) for role in roles
                for j in (range(len(trainables)) if role == "accumulator" else stepped)]
        if len(full) == len(body):
            by_variable: dict[int | None, set[tuple[int, ...]]] = {}
            for (_, j), entry in zip(full, body):
                by_variable.setdefault(j, set()).add(entry.shape)
            if all(len(s) == 1 for s in by_variable.values()):
                differ = any(shapes[j] != next(iter(s)) for j, s in by_variable.items())
                yield Reading(options, tuple(head_slots + full + tail_slots), 2 if differ else 0)
            continue
        # A model with more or fewer variables: which ones, by their shapes.
        # (Not tried with variables overwritten with their gradient.)
        if len(stepped) != len(trainables) or len(body) % len(roles):
            continue
        n = len(body) // len(roles)
        groups = [[e.shape for e in body[g * n:(g + 1) * n]] for g in range(len(roles))]
        if any(group != groups[0] for group in groups):
            continue
        ways, mapping = align(groups[0], trainables)
        if ways == 0:
            continue
        slots = [(role, j) for role in roles for j in mapping]
        yield Reading(options, tuple(head_slots + slots + tail_slots), 1, ambiguous=ways > 1)


def another_optimizers(optimizer: Any, readings: list[Reading], entries: list[Entry],
                       trainables: list[Any]) -> int | None:
    """How many values per trainable variable the entries hold if they are
    another optimizer's. Where all the variables have one shape, Adam's
    pairs lie as a Lion's moving averages (or accumulators) and momentums
    do: a reading as a Lion's checkpoint wins if it has this optimizer's
    options (when not built, only with averages or accumulators: a lone
    group of momentums fits anything), or averages that lie near the weights."""
    own = own_options(optimizer)
    built = optimizer.built

    def vouched(reading: Reading) -> bool:
        if reading.rank != (0 if built else 1):
            return False
        if reading.options == own and (built or own.ema or own.accumulation):
            return True
        return built and reading.options.ema and (
            group_looks_like(reading, trainables, entries)[0] == "average")

    if any(vouched(reading) for reading in readings):
        return None
    return values_per_variable_of_another_optimizer(entries, trainables)


def values_per_variable_of_another_optimizer(entries: list[Entry],
                                             trainables: list[Any]) -> int | None:
    """How many values per trainable variable the entries hold where they are
    another optimizer's: two side by side, one of them never negative (Adam's,
    AdamW's, Nadam's, Adamax's or Lamb's momentum and velocity, Adadelta's or
    Ftrl's accumulators), and with `amsgrad` the velocities' maxima after
    them; None where they are not such. Once built, the values must have the
    variables' shapes. (A Lion's own checkpoint is one momentum per variable,
    and with `use_ema` or accumulation one group of each after another.)"""
    if not entries or not entries[0].is_scalar("int"):
        return None
    start, end = 1, len(entries)
    while start < end and entries[start].is_scalar("float"):
        start += 1  # the learning rate
    while end > start and entries[end - 1].is_scalar("float"):
        end -= 1  # scalars such as Nadam's product of momentum factors
    body = entries[start:end]
    if any(entry.kind != "float" for entry in body):
        return None
    for maxima in (0, 1):
        count = len(body) // (2 + maxima)
        if not count or len(body) != (2 + maxima) * count:
            continue
        shapes = [entry.shape for entry in body[:2 * count:2]]
        if (shapes != [entry.shape for entry in body[1:2 * count:2]]
                or maxima and shapes != [entry.shape for entry in body[2 * count:]]
                or trainables and shapes != [tuple(v.shape) for v in trainables]):
            continue
        # Ftrl saves its never negative accumulator first.
        for squares in ([e.value for e in body[1:2 * count:2] + body[2 * count:]],
                        [e.value for e in body[:2 * count:2]]):
            if all((value >= 0).all() for value in squares) and any(v.any() for v in squares):
                return 2 + maxima
    return None


def scalars_fit(entries: list[Entry], options: Options, before: int, after: int) -> bool:
    end = len(entries) - after
    floats = entries[1:1 + options.learning_rate + before] + entries[end:]
    return (entries[0].is_scalar("int")
            and all(entry.is_scalar("float") for entry in floats)
            and (not options.counter or entries[end - 1].is_scalar("int")))


def align(saved: list[tuple[int, ...]], trainables: list[Any]) -> tuple[int, list[int | None]]:
    """Matches the saved shapes to this model's variables, in order, where the
    checkpoint's model had layers more or fewer (whole layers first: a
    layer's kernel and bias come and go together), else variables more or fewer.

    Returns the number of ways to do it (0, 1, or 2 for "more than one") and,
    for one way, the trainable index of each saved shape (None where this
    model has no such variable).
    """
    shapes = [tuple(v.shape) for v in trainables]
    layers = [list(group) for _, group in itertools.groupby(
        range(len(trainables)), key=lambda j: trainables[j].path.rpartition("/")[0])]
    ways, mapping = align_units(saved, shapes, layers)
    if ways == 0:
        ways, mapping = align_units(saved, shapes, [[j] for j in range(len(shapes))])
    return ways, mapping


def align_units(saved: list[tuple[int, ...]], shapes: list[tuple[int, ...]],
                units: list[list[int]]) -> tuple[int, list[int | None]]:
    fewer = len(saved) < len(shapes)  # Else more: this model lacks some saved variables.
    n, count = len(saved), len(units)

    def fits(i: int, u: int) -> bool:
        return [shapes[j] for j in units[u]] == saved[i:i + len(units[u])]

    # ways[i][u]: the ways to place units[u:] against saved[i:], counted up to 2;
    # with fewer saved variables a unit may be left out, with more a saved one.
    ways = [[0] * (count + 1) for _ in range(n + 1)]
    for i in reversed(range(n + 1)):
        for u in reversed(range(count + 1)):
            if (i == n and fewer) or (u == count and not fewer):
                ways[i][u] = 1
            elif i < n and u < count:
                skip = ways[i][u + 1] if fewer else ways[i + 1][u]
                take = ways[i + len(units[u])][u + 1] if fits(i, u) else 0
                ways[i][u] = min(2, skip + take)
    if ways[0][0] != 1:
        return ways[0][0], []
    mapping: list[int | None] = [None] * n
    i = u = 0
    while i < n and u < count:
        if fits(i, u) and ways[i + len(units[u])][u + 1]:
            mapping[i:i + len(units[u])] = units[u]
            i, u = i + len(units[u]), u + 1
        elif fewer:
            u += 1
        else:
            i += 1
    return 1, mapping


def choose(readings: list[Reading], options: Options, own: dict[Slot, keras.Variable],
           entries: list[Entry], trainables: list[Any],
           steps_per_update: int) -> tuple[list[Reading], str | None, str | None]:
    """The readings with the fewest problems, then closest to this optimizer's options.

    Several only where they load the same (they may drop different roles:
    a moving average or a gradient accumulator); none, with why, otherwise.
    And a doubt to warn of, where the values hint at another reading.
    """
    if not readings:
        return [], None, None
    def saved_hyperparameters(reading: Reading) -> int:
        return reading.slots.count(("hyperparameter", None))

    def key(reading: Reading) -> tuple[int, int, int]:
        # Saved hyperparameters (an older layout) only where nothing else fits as
        # well: a float scalar is the learning rate first.
        return (reading.rank, saved_hyperparameters(reading), -reading.options.agreement(options))

    best_key = min(key(r) for r in readings)
    best = [r for r in readings if key(r) == best_key]
    if any(r.ambiguous for r in best):
        return [], "which of this model's variables its entries belong to is ambiguous", None

    def loaded(reading: Reading) -> set[tuple[Slot, str]]:
        return {(slot, e.key) for slot, e in zip(reading.slots, entries) if slot in own}

    # Moving averages and gradient accumulators lie alike in the store: where
    # readings as one and as the other load differently, the values decide
    # (`group_looks_like`), and where they do not say, the reading closest
    # to this optimizer's options stands. A checkpoint that may be this
    # optimizer's own loads as its own where the values only hint otherwise
    # (averages far behind fast-moving weights lie as far as sums of
    # gradients), with a warning.
    doubt = None
    rivals = [r for r in readings if r.rank == best[0].rank and not r.ambiguous
              and loaded(r) != loaded(best[0])
              and saved_hyperparameters(r) == saved_hyperparameters(best[0])]
    contenders = best + rivals
    as_averages = [r for r in contenders if r.options.ema]
    if as_averages and len(as_averages) < len(contenders):
        seen, sure = group_looks_like(as_averages[0], trainables, entries)
        may_be_own = best[0].options == options
        if seen == "accumulator" and sure and may_be_own and not int(entries[0].value):
            seen = None  # Before the first step, averages not yet set are zero too.
        if seen is not None and seen != ("average" if best[0].options.ema else "accumulator"):
            if may_be_own and not sure:
                doubt = ("loaded the saved moving averages as this optimizer's options say, "
                         "though they lie far from the weights, as gradient accumulators "
                         "would (a checkpoint saved with `gradient_accumulation_steps` loads "
                         "into a Lion with it)")
        elif (may_be_own and not sure and not options.ema and options.accumulation
              and int(entries[0].value) % steps_per_update == 0):
            # This optimizer's own, saved at that count, would be zero.
            doubt = ("loaded the saved gradient accumulators as this optimizer's options say, "
                     f"though after {int(entries[0].value)} steps its own would have been "
                     "reset to zero: they may be moving averages (a checkpoint saved with "
                     "`use_ema` loads into a Lion with it) or another "
                     "`gradient_accumulation_steps`' sums")
        # (Where all load the same, only a sure verdict narrows what the warning names.)
        if doubt is None and seen is not None and (
                sure or len({frozenset(loaded(r)) for r in contenders}) > 1):
            told = [r for r in contenders if r.options.ema == (seen == "average")]
            best = [r for r in told if key(r) == min(key(t) for t in told)]
    if any(loaded(r) != loaded(best[0]) for r in best[1:]):
        return [], AMBIGUOUS_LAYOUT, None
    return best, None, doubt


def group_looks_like(reading: Reading, trainables: list[Any],
                     entries: list[Entry]) -> tuple[str | None, bool]:
    """What the entries this reading takes for moving averages look like, and
    whether surely: "average" if they lie near the current weights (all
    together: a bias starting at 0 moves far from its average relative to
    itself), "accumulator" if they are all zero (reset at an update), both
    sure; "accumulator", not sure, if they lie farther from
    the weights than the weights from 0 (averages far behind fast-moving
    weights do too); else None (the values do not say)."""
    pairs = [(np.asarray(entry.value, np.float64),
              np.asarray(keras.ops.convert_to_numpy(trainables[index]), np.float64))
             for (role, index), entry in zip(reading.slots, entries)
             if role == "average" and index is not None]
    if not pairs:
        return None, False
    if all(not value.any() for value, _ in pairs):
        return "accumulator", True
    distance = sum(float(np.abs(value - weight).sum()) for value, weight in pairs)
    size = sum(float(np.abs(weight).sum()) for _, weight in pairs)
    if distance <= 0.5 * size:
        return "average", True
    return ("accumulator", False) if distance > size else (None, False)


def describe(slot: Slot, trainables: list[Any]) -> str:
    role, index = slot
    if index is None:
        return DESCRIPTIONS[role]
    return f"{DESCRIPTIONS[role]} of {trainables[index].path}"


def describe_saved(roles: list[str], slot: Slot, entry: Entry,
                   trainables: list[Any]) -> tuple[str, str | None]:
    """What a dropped entry is (plural for per-variable roles), and of which variable."""
    role, index = slot
    if role in SCALARS:
        value = entry.value.item()
        return f"{DESCRIPTIONS[role]} ({value:.6g})" if isinstance(value, float) else (
            f"{DESCRIPTIONS[role]} ({value})"), None
    # Several roles: from the store alone, a moving average and a gradient
    # accumulator are alike (one per variable, in the same place).
    what = " or ".join(f"{DESCRIPTIONS[r]}s" for r in roles)
    return what, (trainables[index].path if index is not None else f"shape {entry.shape}")


def summary(items: list[str], limit: int) -> str:
    if len(items) > limit:
        return f"{', '.join(items[:limit])} and {len(items) - limit} more"
    return items[0] if len(items) == 1 else f"{', '.join(items[:-1])} and {items[-1]}"


def fresh_value(optimizer: Any, role: str, index: int | None, variable: keras.Variable) -> Any:
    if role == "average":
        # Keras sets an average to its weight only at iteration 0; with a
        # restored count it would average from zero. (A copy: on JAX the two
        # must not share a buffer.)
        return keras.ops.convert_to_numpy(optimizer._trainable_variables[index])
    return keras.ops.zeros(variable.shape, variable.dtype)


def route_state_warnings(callback: Callable[[str], Any]) -> None:
    """Sends each `StateWarning` that Python would show to `callback(message)` instead.

    The R package passes a function that signals an R warning. Other
    warnings, and those raised off the main thread, are shown as before.
    """
    current = warnings.showwarning
    previous = getattr(current, "_keraslion_previous", current)

    def showwarning(message: Any, category: type[Warning], filename: str, lineno: int,
                    file: Any = None, line: str | None = None) -> None:
        on_main_thread = threading.current_thread() is threading.main_thread()
        if issubclass(category, StateWarning) and on_main_thread:
            callback(str(message))
        else:
            previous(message, category, filename, lineno, file, line)

    showwarning._keraslion_previous = previous  # type: ignore[attr-defined]
    warnings.showwarning = showwarning
