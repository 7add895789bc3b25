#' Optimizer that implements the Lion algorithm.
#'
#' @description
#' Lion ("EvoLved Sign Momentum", Chen et al. 2023) keeps a single momentum
#' per weight and moves every element of a weight by the same amount, the
#' learning rate, in the direction of the sign of an interpolation between
#' the momentum and the current gradient:
#'
#' ```
#' c     = beta_1 * m + (1 - beta_1) * g
#' theta = theta - learning_rate * (sign(c) + weight_decay * theta)
#' m     = beta_2 * m + (1 - beta_2) * g
#' ```
#'
#' With one state tensor instead of Adam's two it needs less memory, and the
#' authors find its advantage over AdamW grows with the batch size. Because
#' every element moves by the full learning rate, choose a learning rate
#' 3-10x smaller than for AdamW and a weight decay 3-10x larger, so that
#' `learning_rate * weight_decay` stays the same;
#' [lion_hparams_from_adamw()] does this conversion.
#'
#' The optimizer is the Python class `keraslion.Lion`, a
#' `keras.optimizers.Optimizer`: pass it to `compile()` of a 'keras3' model
#' or of a model built through `reticulate::import("keras")`.
#' Wherever a number is expected, a NumPy scalar or a 0-d tensor (such as
#' the `op_*()` functions of 'keras3' return) works too, as in
#' `keras3::optimizer_lion()`, and wherever `TRUE` or `FALSE` is, a NumPy
#' bool or a 0-d bool tensor. Keras keeps `learning_rate`, `weight_decay`,
#' the clipping thresholds and `loss_scale_factor` in float32, so a number
#' that float32 would round to 0 or to infinity (magnitudes below about
#' 1.4e-45 or above 3.4e+38) is an error; 0 itself is allowed where the
#' argument allows it.
#'
#' @section Changing hyperparameters during training:
#' `optimizer$learning_rate`, `optimizer$weight_decay`, `optimizer$beta_1`,
#' `optimizer$beta_2`, `optimizer$cautious` and the clipping arguments can
#' be set between steps, e.g. by a callback; a new value is checked when it
#' is set. A learning rate given as a number is held in a variable, so a new
#' number is used at the next step, also in a compiled `fit()` (on JAX, set
#' between batches, only as the next paragraph says).
#' `weight_decay` and betas given as numbers, `cautious`, `clipnorm`,
#' `clipvalue` and `global_clipnorm` are, as in Keras's own optimizers,
#' constants of the compiled train step: in `fit()`'s
#' compiled step on JAX and TensorFlow (XLA or `tf.function`, their default)
#' a new value takes effect only once the step is rebuilt, e.g. by
#' `model$make_train_function(force = TRUE)` or by compiling the model again.
#' Steps run eagerly (`compile(run_eagerly = TRUE)`, PyTorch's `fit()` without
#' `jit_compile = TRUE`, or `optimizer$apply()` called from R) use it at
#' once, and so does PyTorch's `fit()` with `jit_compile = TRUE`, which
#' compiles its step again for the new value. In the same way, a function given as
#' learning rate or beta is called when the step is traced, and a compiled
#' step keeps the value it returned then. On JAX, with
#' `gradient_accumulation_steps`, such a function is also called on steps
#' that only accumulate (JAX traces both branches of Keras's condition), so
#' a bad value it returns is refused one step sooner than on the other
#' backends.
#'
#' A variable given as learning rate, beta or weight decay is read inside
#' the step, where its value cannot be checked: it is checked when it is
#' given, not when it is `assign()`ed later, so keep what you assign in the
#' argument's range (Keras's own optimizers check neither). On JAX, `fit()`
#' holds the optimizer's variables, these and the learning rate's own
#' variable included, as its own state during an epoch, and writes it back
#' at the end: a value set or assigned when an epoch begins is used, but one
#' set between batches (e.g. `optimizer$learning_rate <- 0` in
#' `callback_lambda(on_train_batch_end = ...)`) only if the callback first
#' reaches the model (`self$model` in a `keras3::Callback()`), which syncs
#' that state; otherwise it is ignored, and overwritten at the epoch's end,
#' as for Keras's own optimizers.
#'
#' @section Numerical limits:
#' On JAX and TensorFlow, the CPU kernels (XLA, TensorFlow's) flush float32
#' subnormal numbers (below about 1.2e-38) to 0: an element whose
#' `(1 - beta_1) * g` and `beta_1 * m` are both that small takes no step,
#' and a momentum that small is stored as 0. PyTorch keeps them. With
#' `gradient_accumulation_steps`, Keras sums the gradients in the weights'
#' dtype before it divides by the number of steps, so gradients whose sum
#' exceeds its range (3.4e+38 in float32, 65504 in float16) give an infinite
#' momentum, and +Inf then -Inf a `NaN` one, unless `skip_nonfinite` skips
#' that step: clip gradients that can be that large before they reach the
#' optimizer (its own `clipvalue` comes after the sum). Keras's `clipnorm`
#' and `global_clipnorm` square the gradients in their dtype: beyond about
#' 1.8e+19 in float32 (about 256 in float16) the norm is `Inf`, and then
#' `clipnorm` makes that gradient 0 (`NaN` where `g * clipnorm` overflows)
#' and `global_clipnorm` makes every gradient `NaN`, after `skip_nonfinite`
#' has judged them (as with Keras's own optimizers). XLA (TensorFlow's
#' `jit_compile`, JAX's compiled step) may
#' fuse a multiply and an add into one rounding: where
#' `beta_1 * m + (1 - beta_1) * g` is exactly 0 in float32 (a tie, likeliest
#' with bfloat16 weights and gradients), its result can be a tiny number
#' instead, and the element steps by the learning rate where the other paths
#' leave it; and a bfloat16 weight whose new value lies a hair from halfway
#' between two bfloat16 numbers may round the other way (rarely: the fused
#' result must fall on the other side of halfway). PyTorch's `torch.compile`
#' (`jit_compile = TRUE`) fuses alike: a compiled step's momentum, and with
#' weight decay its weights, may differ from an eager step's by one unit in
#' the last place in some elements (so does Keras's own Lion's momentum).
#' What XLA fuses depends on the whole compiled step: an option that adds to
#' it (`skip_nonfinite`, say) may change a momentum element by one unit in
#' the last place. Keras keeps the learning rate in the default float type:
#' after
#' `keras3::config_set_floatx("bfloat16")`, in bfloat16 (0.01 becomes
#' 0.0100098), as for its own optimizers; the step itself is unchanged.
#'
#' @section One-byte momentum:
#' With `momentum_dtype = "int8"`, each momentum element is stored as an
#' int8 code and each block of 256 elements along the last axis (or a
#' shorter row) keeps a scale, the smallest power of two at or above its
#' largest absolute value, as one exponent byte after the block's codes (as
#' the OCP's MXFP8 format stores its scales): 1.004 bytes per weight for
#' rows that are multiples of 256 (a row of 64 takes 1.016, of 32 1.031),
#' where float32 takes 4 and bfloat16 2, an eighth of AdamW's 8. The codes are float8-like relative to the block's scale, so
#' a momentum 1e4 times smaller than its block's largest keeps
#' a value (plain int8 rounds everything below 1/254 of it to zero, which
#' freezes small momenta next to large ones), and they are rounded up or
#' down at random, without bias, by bits hashed from the step count, the
#' variable and the element: training is deterministic, the same after
#' saving and resuming, and the same on every replica and device.
#'
#' What it costs: each stored momentum is off by up to one code (an eighth
#' of its value within 2^14 of its block's scale, more below; on average
#' nothing); a `NaN` momentum stays `NaN`, and one that is infinite or
#' beyond 2^126 (8.5e37) saturates at 2^126; either makes 2^126 its block's
#' scale, so that the block's other momenta are stored as 0 (a `NaN` or
#' infinite gradient does this unless `skip_nonfinite = TRUE`); and encoding is more work
#' than storing a float. On the CPU, the step with PyTorch, and with JAX and
#' TensorFlow for float32 weights (without `cautious`; with one JAX device;
#' with TensorFlow in the functions XLA compiles, as `fit()` and keraslion's
#' own step run it), runs in a C kernel that reads and writes each element
#' once (with JAX and TensorFlow, an XLA custom call that updates the
#' variables in place): it is compiled on first use with the system's C
#' compiler (`cc`; `c++` for JAX and TensorFlow), for this CPU, and kept in
#' `~/.cache/keraslion` (the environment variable `KERASLION_CACHE_DIR` sets
#' another place, and `KERASLION_NATIVE=0` turns the kernel off); where it
#' cannot be built, a Python `KernelWarning` says so and the backend's
#' operations run the step. Its results are those of the backends' own
#' operations, bit for bit (but the sign and payload of a `NaN`, and the sign
#' of a zero weight; with JAX, those of XLA's operations one by one:
#' XLA's compiled step may differ by a unit in the last place, and flushes
#' subnormal numbers to zero; with TensorFlow, its operations' one by one,
#' from which XLA's fused ones may differ by a unit in the last place).
#' Measured by `make bench` in the package sources on a 2-core x86 CPU
#' (`bench/int8_kernel.py`, one thread; steps on 16.7 million parameters in
#' one variable or 200, and on 2000 vectors of 1024), a step then takes
#' 1.05 to 1.25 times float32's time with PyTorch (whose float32 step runs
#' in C too, in one pass), 0.9 to 1.05 times with JAX and 0.85 to 1.0 times
#' with TensorFlow (float32 steps are bound by memory, the kernel by its
#' arithmetic: the ratio moves with the machine's memory bandwidth; a
#' compiled step also pays for each array it passes, which is why codes and
#' scales share one); where the
#' backends' operations run it (bfloat16 or float16 weights with JAX and
#' TensorFlow, no C compiler), 1.5 to 2 times as long with JAX and
#' TensorFlow, and 3 to 7
#' times with PyTorch. The first step takes longer to compile (a 200-tensor
#' transformer: up to 30 s with JAX, 13 s with TensorFlow with the kernel
#' and 90 s with its operations, against 3 to
#' 8 s; the kernel's first build about 2 s, 3 s for TensorFlow's).
#' Variables whose last axis
#' is shorter than 32, or with fewer than 256 elements, gain little and keep
#' a float32 momentum. Checkpoints load between int8 and float momentums.
#' The vignette `vignette("lion-vs-adamw")` compares training quality and
#' memory.
#'
#' @section Saving and loading:
#' Loading a saved or pickled model (`keras3::load_model()`,
#' `reticulate::py_load_object()`) needs keraslion loaded, by
#' `library(keraslion)` or a `keraslion::` call, which registers `Lion` with
#' Keras: without it Keras says it "could not locate class 'Lion'".
#' A checkpoint (`save_model()`, `save_model_weights()`) loads into a Lion
#' whose options add or drop optimizer variables (`skip_nonfinite`,
#' `use_ema`, `gradient_accumulation_steps`, a schedule for a number as
#' learning rate), and from Keras's own Lion: what matches loads (the
#' iteration count, learning rate, each momentum), what the new options add
#' starts fresh. Saved state with no place is dropped with an R warning of
#' class `keraslion_warning_state`. What the checkpoint lacks, or what
#' cannot be matched, is an error that loads nothing into the optimizer
#' (the model's own weights, which Keras loads first, are loaded); with
#' `load_model_weights(..., skip_mismatch = TRUE)` it is a warning instead.
#' So build the optimizer before `load_model_weights()` in a new session,
#' with `model$optimizer$build(model$trainable_variables)`: it is built by
#' its first step, and a checkpoint's state has no place in it before (an
#' error that says so; Keras's own optimizers drop the state with a
#' warning). `load_model()` builds it itself. A checkpoint saved before
#' training (its optimizer not yet built) holds a fresh optimizer's state:
#' loaded into a trained Lion, it restarts it, with the warning.
#' A checkpoint names no variable: its entries are matched to the trainable
#' weights by order and shape, so one saved with other weights of the same
#' shapes trainable (one of two alike layers frozen, the other not) loads
#' their momentums into these.
#' Moving averages and gradient accumulators lie alike in a checkpoint and
#' are told apart by their values: averages that lie near the weights (as
#' after `fit()`, which copies them into the weights), accumulators that
#' are zero (reset at an update). What has no place here is then dropped,
#' with the warning. Where the values cannot tell, they load as this
#' optimizer's options say, and so where they only hint at the other role
#' (values far from the weights: sums of gradients, or averages far behind
#' fast-moving weights), with the warning: heed it, for sums of gradients
#' taken for averages become the weights when `fit()` copies the averages
#' into them. A checkpoint saved with another `gradient_accumulation_steps`
#' loads as into Keras's own optimizers: its partial sum and its iteration
#' count (of batches, which says when an update falls) load as they are,
#' and an update divides what has been summed by this optimizer's count.
#' Keras's own Lion loads a keraslion
#' checkpoint only when the variables are the same (its own loader skips
#' them all otherwise). A checkpoint of another optimizer that saves two
#' values per weight, one never negative (AdamW, Adam, Nadam, Adamax, Lamb,
#' Adadelta, Ftrl), loads the model's weights and none of its optimizer
#' state, with the warning: the Lion's state is left as it is (a Lion not
#' yet trained starts fresh), as when switching from AdamW with
#' [lion_hparams_from_adamw()]. (Under mixed precision, the loss scale of
#' `compile()`'s `LossScaleOptimizer` loads. Where all the model's weights
#' have one shape, a Lion with `use_ema` or `gradient_accumulation_steps`
#' reads such a checkpoint as its own.) One value per weight (SGD with momentum,
#' RMSprop, Adagrad) cannot be told from a Lion's momentum and loads as one:
#' load such weights with `load_model_weights()` before `compile()`, which
#' leaves out the optimizer state. Under mixed precision (`"mixed_float16"`),
#' `compile()` wraps the Lion in Keras's `LossScaleOptimizer`: its own state
#' (loss scale, step counter) loads whatever the Lion's options, and the
#' Lion's as above (Keras's own loader assigned the Lion's variables by
#' position, which skipped the loss scale, failed, or left saved moving
#' averages in gradient accumulators). Checkpoints also load between mixed
#' precision and without it; a loss scale saved under mixed precision has
#' no place without it and is dropped with the warning (so also when a
#' mixed-precision model is loaded or copied under the `"float32"` dtype
#' policy, which compiles it without loss scaling: set the policy
#' first). A model pickled
#' (`reticulate::py_save_object(model, file)`) keeps its optimizer's state;
#' a built optimizer pickled on its own comes back unbuilt, with its
#' options but without its state, with this warning if it had taken steps.
#'
#' The warning is signalled while Python is loading, and R must not leave
#' Python's frames by a jump. So a `tryCatch()` or `rlang::try_fetch()` for
#' it does not get it, nor do testthat's `expect_no_warning()` and
#' `expect_no_condition()`, which use one: the load completes, and the
#' warning is signalled once the top-level call has returned (under
#' `options(warn = 2)` too). Calling handlers get it (`withCallingHandlers()`,
#' `suppressWarnings()`, `expect_warning()`), but must not leave by an error
#' (`withCallingHandlers(..., keraslion_warning_state = function(w) stop(w))`
#' crashes R, at once or at a later call). To make dropped state an error,
#' use `options(warn = 2)` outside such a `tryCatch()`: the load stops with
#' an error before anything is put into the Lion.
#'
#' @param learning_rate The learning rate: a number >= 0, a
#'   `LearningRateSchedule` (e.g. from `keras3::learning_rate_schedule_cosine_decay()`),
#'   or a function that can be called with no arguments (such as
#'   `function() 1e-3` or `function(...) 1e-3`) and returns the learning
#'   rate. What the function returns is checked each time it is called: `NA`,
#'   a negative, infinite or non-numeric result is an error naming
#'   `learning_rate`. An R function cannot be saved: `save_model()` (and
#'   `callback_model_checkpoint()`) is then an error, raised after Keras
#'   has opened the file, so save to a new path, not over a good model. A
#'   variable (`keras3::keras_variable(1e-3)`) is followed: the optimizer
#'   reads its value at every step, and saves it.
#' @param beta_1 A number in (0, 1], or a function that can be called with no
#'   arguments and returns one: the weight of the momentum in the
#'   interpolation whose sign is the step. A value below float32's smallest
#'   normal number (1.2e-38) is refused: XLA flushes it to 0. A number set
#'   later with `optimizer$beta_1 <- ...` reaches a compiled `fit()` step on
#'   JAX or TensorFlow only when it is rebuilt (see "Changing
#'   hyperparameters during training").
#' @param beta_2 A number in \[0, 1), or a function that can be called with
#'   no arguments and returns one: the decay rate of the momentum. A value
#'   below float32's smallest normal number (1.2e-38) other than 0 is refused:
#'   the float32 step would round it to 0. Set later,
#'   it behaves as `beta_1`.
#' @param weight_decay `NULL` or a number >= 0: decoupled weight decay; each
#'   step also subtracts `learning_rate * weight_decay * theta`. A value set
#'   later with `optimizer$weight_decay <- ...` reaches a compiled `fit()`
#'   step on JAX or TensorFlow only when it is rebuilt, as in Keras's own
#'   optimizers (see
#'   "Changing hyperparameters during training"). `beta_1`, `beta_2` and
#'   `weight_decay` may also be variables (`keras3::keras_variable()`),
#'   given here or set later: read at every step, also by a compiled
#'   `fit()`. Unlike the learning rate, such a variable is not saved with
#'   the optimizer's state: its value is yours to set (the saved config
#'   keeps the value it had).
#' @param clipnorm `NULL` or a number > 0: each gradient is clipped so that
#'   its norm is at most this value.
#' @param clipvalue `NULL` or a number > 0: each gradient element is clipped
#'   to `[-clipvalue, clipvalue]`.
#' @param global_clipnorm `NULL` or a number in \[2^-126, 2^126] (about
#'   1.2e-38 to 8.5e+37: Keras divides by it, and on JAX and TensorFlow a
#'   smaller number or reciprocal is flushed to 0): all gradients are clipped
#'   together so that their global norm is at most this value. At most one of
#'   `clipnorm`, `clipvalue` and `global_clipnorm` may be set.
#' @param use_ema `TRUE` or `FALSE`: whether to keep an exponential moving
#'   average (EMA) of the model's weights.
#' @param ema_momentum A number in \[0, 1], used when `use_ema = TRUE`:
#'   `average = ema_momentum * average + (1 - ema_momentum) * weight`.
#' @param ema_overwrite_frequency `NULL` or a whole number from 1 to
#'   2147483647 (R's largest integer), used when
#'   `use_ema = TRUE`: every this many steps the weights are overwritten by
#'   their average. With `NULL` this happens once, when
#'   `optimizer$finalize_variable_values()` is called, which `fit()` does at
#'   the end of training. Not supported under a `tf.distribute` strategy
#'   (an error).
#' @param name A single string without `"/"`: the optimizer's name, used in
#'   the paths of its variables. Not given (or `NULL`), Keras numbers the
#'   default name as it does for its own optimizers: `"lion"`, then `"lion_1"`, ..., so
#'   that two optimizers in one session (e.g. in one `MultiOptimizer`) never
#'   share variable paths. A name given explicitly is kept as it is.
#' @param ... Further named arguments passed to the Python optimizer, for
#'   forward and backward compatibility. An argument it does not know is an
#'   error.
#' @param loss_scale_factor `NULL` or a number in \[2^-126, 2^126], as for
#'   `global_clipnorm`: the loss is multiplied and the gradients divided by
#'   this factor, to keep small gradients from underflowing in mixed
#'   precision. The scaled loss must stay within its float type's range
#'   (65504 in float16).
#' @param gradient_accumulation_steps `NULL` or a whole number from 2 to
#'   2147483647: the
#'   weights are updated every this many steps, with the mean of the
#'   gradients since the last update. Learning-rate schedules count every
#'   step; `ema_overwrite_frequency` counts updates. A gradient of another
#'   dtype than its weights is cast to theirs before it is added. Fixed
#'   once the optimizer is built (Keras makes the accumulators then). Not supported
#'   under a `tf.distribute` strategy (an error: Keras cannot synchronize
#'   the replicas there).
#' @param momentum_dtype `NULL` (the weight's own dtype) or one of
#'   `"float32"`, `"bfloat16"`, `"float16"`, `"float64"`, `"int8"`: the
#'   dtype the momentum is stored in. `"bfloat16"` halves the optimizer's
#'   memory; the step is still computed in float32. A float16 momentum
#'   saturates at +-65504 (only the sign of `c` matters) instead of
#'   overflowing to `Inf`, which would fix an element's direction for good.
#'   `"float64"` on JAX needs JAX's 64-bit mode (`Sys.setenv(JAX_ENABLE_X64
#'   = 1)` before Python starts); without it, it is an error. `"int8"`
#'   stores one byte per weight and one per block of 256 along the last
#'   axis (1.004 bytes per weight for rows of 256 or multiples, a quarter
#'   of float32); see
#'   "One-byte momentum" below. With PyTorch on the CPU, float32 weights
#'   with a float32 or bfloat16 momentum step in a C kernel (built and
#'   cached as the int8 one is) that reads and writes each element once,
#'   with the same results as PyTorch's operations one by one (a `NaN`
#'   stays `NaN`, perhaps of another sign or payload, and a zero weight may
#'   take the other sign of zero): 0.6 ns per
#'   parameter on one thread of a 2-core x86 CPU, a bfloat16 momentum 1.0 to
#'   1.15 times as fast (`bench/int8_kernel.py`). Where it cannot be built,
#'   PyTorch's operations run the step (within a rounding).
#' @param cautious `TRUE` or `FALSE`: cautious Lion (C-Lion, Liang et al.
#'   2024). Elements whose step direction disagrees in sign with the current
#'   gradient are not moved; in each weight tensor the other elements are
#'   scaled by `size / max(kept, 1)`, the inverse of the kept fraction (the
#'   `max` makes a step where nothing is kept a zero step). The momentum
#'   update and the weight decay are unchanged. On PyTorch a cautious step
#'   takes the plain path, a few Keras operations per variable, which is
#'   slower than the fast path, most on many small variables. It may be
#'   set between steps (`optimizer$cautious <- TRUE`); a step that
#'   TensorFlow or JAX has compiled (the train step of `fit()`) keeps the
#'   value it was compiled with, until the model is compiled again.
#' @param exclude_from_weight_decay `NULL` (or an empty vector or list, as
#'   `get_config()` gives it back) or a character vector (or a list of
#'   strings) of regular expressions: a weight whose path (such as `"dense/bias"`) or name
#'   matches any of them gets no weight decay, e.g. `c("bias", "norm")`.
#'   Each tail of the path after a `/` is tried too, so `"^head/kernel$"`
#'   matches whether or not Keras puts the model's name in front (it does for
#'   a `keras_model_sequential()` built in code, `"sequential/head/kernel"`,
#'   not once it is loaded from a file). Saved with the optimizer. Python's
#'   `re` module applies them, so they are written in its syntax and checked
#'   by it: R's classes such as
#'   `"[[:alpha:]]"` are an error, use `"[a-zA-Z]"` instead.
#' @param skip_nonfinite `TRUE` or `FALSE`: when `TRUE`, a step whose
#'   gradients hold `NaN` or `Inf` leaves the weights, the momentum, the EMA
#'   and the iteration count untouched, and is counted in
#'   `optimizer$nonfinite_steps`. The gradients are judged as the step gets
#'   them: divided by `loss_scale_factor`, and with
#'   `gradient_accumulation_steps` as the accumulator will hold them, summed
#'   in their weights' dtype (finite gradients whose sum overflows are
#'   skipped, and the accumulator keeps its sum). Under a `tf.distribute`
#'   strategy each replica judges its own gradients, not the replicas' sum.
#'   It cannot be changed once the optimizer has taken its first step (a
#'   compiled step has the check traced in):
#'   compile with a new optimizer and load the checkpoint into it instead.
#'
#' @returns The Python optimizer, a `keras.optimizers.Optimizer` (class
#'   `keraslion.lion.Lion`), ready for `compile()`. Its arguments can be
#'   changed later, e.g. `opt$beta_1 <- 0.95`: R checks and converts the
#'   value as here (see [lion-attributes]).
#'
#' @section References:
#' - Chen, X. et al. (2023). Symbolic Discovery of Optimization Algorithms.
#'   <https://arxiv.org/abs/2302.06675>
#' - The authors' implementation: <https://github.com/google/automl/tree/master/lion>
#' - Liang, K. et al. (2024). Cautious Optimizers: Improving Training with
#'   One Line of Code. <https://arxiv.org/abs/2411.16085>
#'
#' @seealso `keras3::optimizer_lion()`, Keras's own Lion, whose signature
#'   this function keeps.
#' @family optimizers
#' @export
#' @examplesIf keraslion_available()
#' # A Keras optimizer, checked and ready for compile():
#' opt <- optimizer_lion(learning_rate = 1e-3, weight_decay = 0.01)
#' str(opt$get_config()[c("learning_rate", "beta_1", "beta_2", "weight_decay")])
#' \donttest{
#' # Training a keras3 model (a few seconds: Keras compiles the steps first).
#' if (requireNamespace("keras3", quietly = TRUE)) {
#'   library(keras3)
#'   model <- keras_model_sequential(input_shape = 4) |>
#'     layer_dense(16, activation = "relu") |>
#'     layer_dense(3, activation = "softmax")
#'
#'   # keras3 exports an optimizer_lion() too: attach keraslion after keras3,
#'   # or name the package, as here.
#'   model |> compile(
#'     optimizer = keraslion::optimizer_lion(learning_rate = 1e-3, weight_decay = 0.01),
#'     loss = "sparse_categorical_crossentropy",
#'     metrics = "accuracy"
#'   )
#'   x <- scale(as.matrix(iris[, 1:4]))
#'   y <- as.integer(iris$Species) - 1L
#'   model |> fit(x, y, epochs = 20, batch_size = 16, verbose = 0)
#'   print(model |> evaluate(x, y, verbose = 0))
#' }
#' }
optimizer_lion <- function(learning_rate = 0.001,
                           beta_1 = 0.9,
                           beta_2 = 0.99,
                           weight_decay = NULL,
                           clipnorm = NULL,
                           clipvalue = NULL,
                           global_clipnorm = NULL,
                           use_ema = FALSE,
                           ema_momentum = 0.99,
                           ema_overwrite_frequency = NULL,
                           name = "lion",
                           ...,
                           loss_scale_factor = NULL,
                           gradient_accumulation_steps = NULL,
                           momentum_dtype = NULL,
                           cautious = FALSE,
                           exclude_from_weight_decay = NULL,
                           skip_nonfinite = FALSE) {
  dots <- check_dots_named(list(...))
  clipping <- check_at_most_one(list(
    clipnorm = lion_argument("clipnorm", clipnorm),
    clipvalue = lion_argument("clipvalue", clipvalue),
    global_clipnorm = lion_argument("global_clipnorm", global_clipnorm)
  ))
  args <- c(
    list(
      learning_rate = lion_argument("learning_rate", learning_rate),
      beta_1 = lion_argument("beta_1", beta_1),
      beta_2 = lion_argument("beta_2", beta_2),
      weight_decay = lion_argument("weight_decay", weight_decay)
    ),
    clipping,
    list(
      use_ema = lion_argument("use_ema", use_ema),
      ema_momentum = lion_argument("ema_momentum", ema_momentum),
      ema_overwrite_frequency = lion_argument("ema_overwrite_frequency", ema_overwrite_frequency),
      # Not given, or `NULL` (as keras3's optimizer_lion() takes): `None`, so
      # that Keras numbers the default name ("lion", "lion_1", ...) and two
      # optimizers never share variable paths.
      name = if (!missing(name)) lion_argument("name", name),
      loss_scale_factor = lion_argument("loss_scale_factor", loss_scale_factor),
      gradient_accumulation_steps = lion_argument(
        "gradient_accumulation_steps", gradient_accumulation_steps
      ),
      momentum_dtype = lion_argument("momentum_dtype", momentum_dtype),
      cautious = lion_argument("cautious", cautious),
      exclude_from_weight_decay = lion_argument(
        "exclude_from_weight_decay", exclude_from_weight_decay
      ),
      skip_nonfinite = lion_argument("skip_nonfinite", skip_nonfinite)
    )
  )
  lion <- python_core()$Lion
  do.call(lion, c(args, check_dots_known(dots, lion)))
}

# One argument of optimizer_lion(), checked and converted for Python; any
# other name is passed on as it is. Keras keeps the numbers marked
# `float32 = TRUE` in float32: one that float32 rounds to 0 or to infinity
# is refused; a beta below float32's smallest normal number too.
lion_argument <- function(name, value, call = caller_env()) {
  switch(name,
    learning_rate = as_number(value, name, 0,
      allow_callable = TRUE, allow_variable = TRUE, float32 = TRUE,
      also = "a learning-rate schedule", hint = hparams_list_hint(value), call = call
    ),
    beta_1 = check_normal_float32(as_number(value, name, 0, 1,
      lower_closed = FALSE, upper_closed = TRUE, allow_callable = TRUE,
      allow_variable = TRUE, call = call
    ), name, call = call),
    beta_2 = check_normal_float32(as_number(value, name, 0, 1,
      allow_callable = TRUE, allow_variable = TRUE, call = call
    ), name, call = call),
    weight_decay = as_number(value, name, 0,
      allow_null = TRUE, allow_variable = TRUE, float32 = TRUE, call = call
    ),
    clipnorm = ,
    clipvalue = ,
    global_clipnorm = ,
    loss_scale_factor = {
      number <- as_number(value, name, 0,
        lower_closed = FALSE, allow_null = TRUE, float32 = TRUE, call = call
      )
      # Keras divides by these two.
      if (name %in% c("global_clipnorm", "loss_scale_factor")) {
        check_divisor(number, name, call = call)
      }
      number
    },
    ema_momentum = as_number(value, name, 0, 1, upper_closed = TRUE, call = call),
    ema_overwrite_frequency = as_whole_number(value, name, 1, call = call),
    gradient_accumulation_steps = as_whole_number(value, name, 2, call = call),
    use_ema = ,
    cautious = ,
    skip_nonfinite = check_flag(value, name, call = call),
    name = check_name(value, allow_null = TRUE, call = call),
    momentum_dtype = check_choice(value, name,
      c("float32", "bfloat16", "float16", "float64", "int8"),
      call = call
    ),
    exclude_from_weight_decay = as_patterns(value, name, call = call),
    value
  )
}

#' Set an argument of a Lion optimizer from R
#'
#' `optimizer$beta_1 <- 0.95` (or `optimizer[["beta_1"]] <- 0.95`) checks
#' and converts the value as [optimizer_lion()] does for its argument of
#' that name (a clear R error, and nothing changed, for a bad one), then
#' sets it on the Python optimizer, which checks it again: `momentum_dtype`,
#' `use_ema`, `skip_nonfinite` and `gradient_accumulation_steps` are fixed
#' once the optimizer is built, only one clipping argument may be set, and
#' a built optimizer's learning rate takes numbers (its variable is saved
#' with its state) where one given as a schedule or a function takes those.
#' `name` must be a string here, and `exclude_from_weight_decay` cannot be
#' set (it is a method: `optimizer$exclude_from_weight_decay(var_names =
#' ...)` before the first step). Other attributes are set as reticulate
#' sets them. The object returned by `optimizer_lion()` is checked so; a
#' `LossScaleOptimizer` that wraps it (mixed precision) passes only
#' `learning_rate` on (the Lion checks it in Python: a bad value is a Python
#' error), and keeps any other value as its own attribute, which the Lion
#' never sees: set them on its `inner_optimizer`.
#'
#' @param x An optimizer made by [optimizer_lion()].
#' @param name The attribute's name.
#' @param value Its new value.
#' @return `x`, changed in place (it is a Python object).
#' @name lion-attributes
#' @keywords internal
#' @export
`$<-.keraslion.lion.Lion` <- function(x, name, value) {
  if (is.character(name) && length(name) == 1) {
    value <- set_lion_argument(name, value, x)
  }
  NextMethod()
}

#' @rdname lion-attributes
#' @export
`[[<-.keraslion.lion.Lion` <- `$<-.keraslion.lion.Lion`

# lion_hparams_from_adamw()'s list given as one argument.
hparams_list_hint <- function(x) {
  if (is.list(x) && setequal(names(x), c("learning_rate", "weight_decay"))) {
    "For {.fn lion_hparams_from_adamw}'s list, write {.code do.call(optimizer_lion, ...)}."
  }
}

# `lion_argument()` for a value set on the optimizer, where three arguments
# differ: the learning rate keeps its kind (`set_learning_rate()`),
# `exclude_from_weight_decay` is a method there (set, the value would
# replace it), and a `NULL` name would not be numbered.
set_lion_argument <- function(name, value, optimizer, call = caller_env()) {
  if (identical(name, "learning_rate")) {
    return(set_learning_rate(value, optimizer, call))
  }
  if (identical(name, "exclude_from_weight_decay")) {
    cli::cli_abort(
      c(
        "{.arg exclude_from_weight_decay} cannot be set on the optimizer.",
        i = "Give it to {.fn optimizer_lion}, or call
             {.code opt$exclude_from_weight_decay(var_names = ...)} before the first step."
      ),
      call = call, class = "keraslion_error_argument"
    )
  }
  if (identical(name, "name")) {
    return(check_name(value, call = call))
  }
  lion_argument(name, value, call = call)
}

# A learning rate set on the optimizer takes what it holds, as Python's
# setter decides: a number where it holds a variable (before the first step,
# also a schedule or a function, which then replace it), a schedule or a
# function where it was given one. A variable other than the one given is
# refused: set later, it would not be followed.
set_learning_rate <- function(value, optimizer, call) {
  current <- reticulate::py_get_attr(optimizer, "_learning_rate")
  if (is_py_variable(value)) {
    if (py_checks()$is_same(value, current)) {
      return(value)
    }
    cli::cli_abort(
      c(
        "{.arg learning_rate} can be a variable (followed at every step) only when given to
         {.fn optimizer_lion}, not set later.",
        i = if (is_py_variable(current)) {
          "Set a number instead (or, to a variable given to {.fn optimizer_lion},
           {.code $assign()} a new value)."
        } else {
          "This optimizer's learning rate is a schedule or a function: set another."
        }
      ),
      call = call, class = "keraslion_error_argument"
    )
  }
  schedule <- "a learning-rate schedule"
  callable <- "a function that can be called with no arguments"
  is_callable <- is_value_function(value)
  if (!is_py_variable(current)) {
    if (!is_callable) {
      abort_arg("learning_rate", one_of(c(schedule, callable)), value, call,
        hint = "It was given as one, so there is no variable to hold a number: give the number
                to a new {.fn optimizer_lion}."
      )
    }
    return(as_number(value, "learning_rate", 0, allow_callable = TRUE, call = call))
  }
  built <- isTRUE(reticulate::py_to_r(reticulate::py_get_attr(optimizer, "built")))
  as_number(value, "learning_rate", 0,
    allow_callable = !built, float32 = TRUE, also = if (!built) schedule,
    hint = if (built && is_callable) {
      "A built optimizer holds its learning rate in a variable, saved with its state: set a
       number, or give a schedule or a function to a new {.fn optimizer_lion}."
    },
    call = call
  )
}
