# Argument checks and conversions for Python. Each returns the value in the
# form Python expects, or signals an error that names the argument, states the
# rule and shows what was received.

is_py_object <- function(x) {
  inherits(x, "python.builtin.object")
}

# A Python class: callable (it makes an instance), never a value's function.
is_py_class <- function(x) {
  inherits(x, "python.builtin.type")
}

# A function called for a value: an R function, or a Python schedule or
# function (reticulate makes a callable Python object an R function too).
is_value_function <- function(x) {
  if (is_py_object(x)) {
    !is_py_class(x) && reticulate::py_has_attr(x, "__call__")
  } else {
    is.function(x)
  }
}

# A short description of a value for error messages. A classed value is
# named by its class, not shown as the numbers or strings it is made of (a
# factor's codes, a date's days since 1970).
describe <- function(x) {
  if (is.null(x)) {
    return("`NULL`")
  }
  if (is.primitive(x)) {
    return(paste0("the primitive function `", primitive_name(x), "()`"))
  }
  # A Python object first: reticulate makes a callable one (a schedule) an R
  # function too.
  if (is_py_class(x)) {
    name <- reticulate::py_to_r(reticulate::py_get_attr(x, "__name__"))
    return(paste0("the Python class <", name, "> (not an instance of it)"))
  }
  if (is_py_object(x)) {
    return(paste0("a Python object of class <", class(x)[[1]], ">"))
  }
  if (is.function(x)) {
    return("a function")
  }
  if (is.factor(x)) {
    return("a factor")
  }
  if (is.data.frame(x)) {
    return("a data frame")
  }
  if (is.object(x)) {
    return(paste0("a <", class(x)[[1]], "> object"))
  }
  if (is.atomic(x) && length(x) == 1) {
    if (is.na(x)) {
      return(paste0("`", format(x), "`"))
    }
    if (is.character(x)) {
      return(paste0("the string ", encodeString(x, quote = "\"")))
    }
    return(paste0("`", format_exactly(x), "`"))
  }
  if (is.environment(x)) {
    return("an environment")
  }
  type <- if (is.atomic(x)) paste(typeof(x), "vector") else class(x)[[1]]
  paste0("a ", type, " of length ", length(x))
}

# A number with the fewest digits (15, else 17) that read back as it: with
# fewer, `1 + 2^-52` would show as `1`, as if `1` were refused.
# (sprintf() writes "." whatever `options(OutDec)` says, so it reads back.)
format_exactly <- function(x) {
  exact <- !is.double(x) || identical(as.numeric(sprintf("%.15g", x)), x)
  format(x, digits = if (exact) 15 else 17)
}

# "sum" for `sum`: deparse() gives `.Primitive("sum")`.
primitive_name <- function(x) {
  sub('^\\.Primitive\\("(.*)"\\)$', "\\1", deparse(x)[[1]])
}

abort_arg <- function(arg, rule, x, call, hint = NULL) {
  received <- describe(x)
  cli::cli_abort(
    c("{.arg {arg}} must be {rule}, not {received}.", i = hint),
    call = call,
    class = "keraslion_error_argument"
  )
}

# "a finite number >= 0", "a finite number in (0, 1]" and the like.
describe_range <- function(lower, upper, lower_closed, upper_closed) {
  if (is.infinite(upper)) {
    return(paste("a finite number", if (lower_closed) ">=" else ">", lower))
  }
  paste0(
    "a finite number in ", if (lower_closed) "[" else "(", lower, ", ",
    upper, if (upper_closed) "]" else ")"
  )
}

# "a", "a or b", "a, b, or c".
one_of <- function(forms) {
  if (length(forms) <= 2) {
    return(paste(forms, collapse = " or "))
  }
  paste0(paste(forms[-length(forms)], collapse = ", "), ", or ", forms[length(forms)])
}

is_number <- function(x) {
  is.numeric(x) && !is.object(x) && length(x) == 1 && !is.na(x)
}

# Python's own notion of a real number, defined once per session. (Names
# imported at the top would not be seen by the functions of a local namespace.)
py_checks_code <- '
def real_number(x):
    """A real number, or a 0-d array or tensor of one, as a float; else None."""
    import numbers

    if isinstance(x, bool) or "bool" in str(getattr(x, "dtype", "")):
        return None
    if not isinstance(x, numbers.Real) and getattr(x, "shape", None) != ():
        return None
    return float(x)


def flag(x):
    """A Python or NumPy bool, or a 0-d bool array or tensor, as a bool; else
    None (for a variable too, whose value could change, and a masked array)."""
    import numpy as np

    if isinstance(x, (bool, np.bool_)):
        return bool(x)
    if hasattr(x, "assign") or isinstance(x, np.ma.MaskedArray) or getattr(x, "shape", None) != ():
        return None
    # The names NumPy, JAX, PyTorch and TensorFlow give their bool dtype.
    if str(getattr(x, "dtype", "")) not in ("bool", "torch.bool", "<dtype: \'bool\'>"):
        return None
    return bool(x)


def is_same(a, b):
    return a is b


def variable_kind(x):
    """A variable (a keras.Variable, or a backend variable such as a
    tf.Variable): its dtype as Keras names it, its shape as a list of ints,
    and, for a float scalar, its value; None for anything else."""
    import keras
    import numpy as np

    try:
        dtype = keras.backend.standardize_dtype(x.dtype)
        shape = [int(d) for d in x.shape]
    except (AttributeError, TypeError, ValueError):
        return None
    if shape or "float" not in dtype:
        return dtype, shape, None
    return dtype, shape, float(np.asarray(keras.ops.convert_to_numpy(x), dtype=np.float64))
'

py_checks <- function() {
  if (is.null(the$py_checks)) {
    the$py_checks <- reticulate::py_run_string(py_checks_code, local = TRUE, convert = TRUE)
  }
  the$py_checks
}

# A Python number, or a 0-d NumPy array or tensor (as keras3's `op_*()`
# functions return), as an R number; any other value as it is. A variable
# (`keras3::keras_variable()`) stays one: Lion follows its value.
from_py_number <- function(x) {
  if (!is_py_object(x) || is_py_variable(x)) {
    return(x)
  }
  number <- tryCatch(py_checks()$real_number(x), error = function(e) NULL)
  if (is.null(number)) x else number
}

is_py_variable <- function(x) {
  is_py_object(x) && !is_py_class(x) && reticulate::py_has_attr(x, "assign")
}

# A number in an interval, as a double; with `allow_variable`, a Python
# variable is passed through (Python checks it and follows it at every
# step); with `allow_callable`, an R function
# that can be called with no arguments, or a Python object, is passed through
# for Python to use as a callable (Python checks what it returns). With
# `float32`, a number that float32 (the dtype Keras keeps it in) would round
# to 0 or to infinity is refused as well: 0 itself stays allowed where the
# interval has it. `also`: other accepted forms, named in the error;
# `hint`: a line the error adds.
as_number <- function(x, arg, lower, upper = Inf, lower_closed = TRUE,
                      upper_closed = FALSE, allow_null = FALSE,
                      allow_callable = FALSE, allow_variable = FALSE,
                      float32 = FALSE, also = NULL, hint = NULL, call = caller_env()) {
  if (allow_null && is.null(x)) {
    return(NULL)
  }
  if (allow_variable && is_py_variable(x)) {
    check_variable_value(x, arg, lower, upper, lower_closed, upper_closed, float32, call)
    return(x)
  }
  x <- from_py_number(from_keras_config(x))
  rule <- one_of(c(
    if (allow_null) "`NULL`",
    describe_range(lower, upper, lower_closed, upper_closed),
    also,
    if (allow_variable) "a `keras_variable()`",
    if (allow_callable) "a function that can be called with no arguments"
  ))
  callable <- is_value_function(x)
  if (allow_callable && callable) {
    if (is_py_object(x)) {
      return(x)
    }
    check_callable_without_arguments(x, arg, rule, call)
    return(returning_na_as_nan(x))
  }
  in_range <- is_number(x) && is.finite(x) &&
    (if (lower_closed) x >= lower else x > lower) &&
    (if (upper_closed) x <= upper else x < upper)
  if (!in_range) {
    abort_arg(arg, rule, x, call, hint)
  }
  if (float32) {
    check_float32(x, arg, rule, call)
  }
  as.double(x)
}

# A variable's value now, checked as a number given for `arg` would be
# (Python checks it again at every step): a float scalar variable.
check_variable_value <- function(x, arg, lower, upper, lower_closed, upper_closed, float32,
                                 call) {
  kind <- py_checks()$variable_kind(x)
  if (is.null(kind)) {
    abort_arg(arg, "a variable of one float number", x, call)
  }
  dtype <- kind[[1]]
  shape <- unlist(kind[[2]])
  value <- kind[[3]]
  if (is.null(value)) {
    cli::cli_abort(
      "{.arg {arg}} must be a variable of one float number, not one of dtype {dtype} and
       shape ({paste(shape, collapse = ', ')}).",
      call = call, class = "keraslion_error_argument"
    )
  }
  rlang::try_fetch(
    as_number(value, arg, lower, upper, lower_closed, upper_closed, float32 = float32,
      call = call
    ),
    keraslion_error_argument = function(cnd) {
      cli::cli_abort(
        "{.arg {arg}} is a variable holding {describe(value)}: its value must be
         {describe_range(lower, upper, lower_closed, upper_closed)}.",
        parent = cnd, call = call, class = "keraslion_error_argument"
      )
    }
  )
  invisible(x)
}

# A beta (a number, or a variable's value; a function is checked in Python
# when called) that is 0 or at least float32's smallest normal number,
# 2^-126: a smaller one rounds to 0 in the float32 step, or is flushed to 0
# by XLA.
check_normal_float32 <- function(x, arg, call = caller_env()) {
  # A variable's value has passed `check_variable_value()`: a float scalar.
  number <- if (is_py_variable(x)) py_checks()$variable_kind(x)[[3]] else x
  if (!is_number(number) || number == 0 || number >= 2^-126) {
    return(x)
  }
  received <- paste0(if (is_py_variable(x)) "a variable holding " else "", describe(number))
  cli::cli_abort(
    c(
      "{.arg {arg}} must be at least 2^-126 (about 1.1754944e-38), float32's smallest normal
       number{if (arg == 'beta_2') ' (or 0)' else ''}, not {received}.",
      i = "A smaller one rounds to 0 in the float32 step, or is flushed to 0 by XLA."
    ),
    call = call,
    class = "keraslion_error_argument"
  )
}

# A Keras object as a config gives it back (a named list with `class_name`
# and `config`: a learning-rate schedule, a registered function), made
# again, so that `do.call(optimizer_lion, opt$get_config())` makes the same
# optimizer.
from_keras_config <- function(x) {
  if (!is.list(x) || is.object(x) || !all(c("class_name", "config") %in% names(x))) {
    return(x)
  }
  reticulate::import("keras")$saving$deserialize_keras_object(x)
}

# A number Keras divides by (`global_clipnorm`, `loss_scale_factor`), or
# `NULL`: it and its reciprocal must be normal float32 numbers, as XLA and
# TensorFlow flush smaller ones to 0 on CPU (the gradients became 0 or NaN).
check_divisor <- function(x, arg, call = caller_env()) {
  if (is.null(x) || (x >= 2^-126 && x <= 2^126)) {
    return(invisible(x))
  }
  cli::cli_abort(
    c(
      "{.arg {arg}} must be `NULL` or a number in [2^-126, 2^126] (about 1.2e-38 to
       8.5e+37), not {describe(x)}.",
      i = "Keras divides by it, and on JAX and TensorFlow a smaller number or
           reciprocal is flushed to 0, which makes the gradients 0 or NaN."
    ),
    call = call,
    class = "keraslion_error_argument"
  )
}

# `fn`, but a logical or integer NA it returns reaches Python as NaN:
# reticulate passes them as True and -2147483648, which Python's check
# refused showing as the value received.
returning_na_as_nan <- function(fn) {
  force(fn)
  function(...) {
    value <- fn(...)
    if ((is.logical(value) || is.integer(value)) && anyNA(value)) as.double(value) else value
  }
}

# An R function that Python can call with no arguments: no argument without a
# default (`...` is fine), and not a primitive such as `sum`, which reticulate
# does not pass to Python as a function.
check_callable_without_arguments <- function(x, arg, rule, call) {
  received <- describe(x)
  if (is.primitive(x)) {
    cli::cli_abort(
      c(
        "{.arg {arg}} must be {rule}, not {received}.",
        i = paste(
          "A primitive does not reach Python as a function: call it in a function",
          "of your own, as in {.code function() {primitive_name(x)}(x)}."
        )
      ),
      call = call,
      class = "keraslion_error_argument"
    )
  }
  args <- formals(x)
  required <- vapply(seq_along(args), function(i) identical(args[[i]], quote(expr = )), logical(1))
  required <- setdiff(names(args)[required], "...")
  if (length(required) > 0) {
    received <- "a function with {cli::qty(required)}required argument{?s} {.arg {required}}"
    cli::cli_abort(
      paste0("{.arg {arg}} must be {rule}, not ", received, "."),
      call = call,
      class = "keraslion_error_argument"
    )
  }
  invisible(x)
}

# float32 (round to nearest, ties to even) rounds magnitudes up to 2^-150 to 0
# (2^-150 is halfway to its smallest subnormal, 2^-149, and ties to 0), and
# from 2^128 - 2^103 (halfway past its largest finite value) on to infinity.
float32_to_zero <- 2^-150
float32_to_inf <- 2^128 - 2^103

check_float32 <- function(x, arg, rule, call) {
  if (x == 0 || (abs(x) > float32_to_zero && abs(x) < float32_to_inf)) {
    return(invisible(x))
  }
  received <- describe(x)
  rounded <- if (abs(x) >= float32_to_inf) "infinity" else "0"
  cli::cli_abort(
    c(
      "{.arg {arg}} must be {rule}, not {received}.",
      x = "In float32, which Keras keeps it in, {received} rounds to {rounded}.",
      i = "float32 holds magnitudes from about 1.4e-45 to 3.4e+38."
    ),
    call = call,
    class = "keraslion_error_argument"
  )
}

# `NULL` or a whole number (integer or double) from `lower` to R's largest
# integer, as an integer, which reticulate passes to Python as an `int`.
as_whole_number <- function(x, arg, lower, call = caller_env()) {
  if (is.null(x)) {
    return(NULL)
  }
  x <- from_py_number(x)
  if (!is_number(x) || !is.finite(x) || x != round(x) || x < lower ||
    x > .Machine$integer.max) {
    rule <- paste("`NULL` or a whole number from", lower, "to", .Machine$integer.max)
    abort_arg(arg, rule, x, call)
  }
  as.integer(x)
}

check_flag <- function(x, arg, call = caller_env()) {
  if (is_py_object(x)) {
    # One that Python cannot read (a tensor on PyTorch's meta device) is not a flag.
    x <- tryCatch(py_checks()$flag(x), error = function(e) NULL) %||% x
  }
  if (!is.logical(x) || length(x) != 1 || is.na(x)) {
    abort_arg(arg, "`TRUE` or `FALSE`", x, call)
  }
  # Without dimensions: reticulate passes `matrix(TRUE)` as an array.
  as.vector(x)
}

is_string <- function(x) {
  is.character(x) && length(x) == 1
}

check_string <- function(x, arg, allow_null = FALSE, call = caller_env()) {
  if (allow_null && is.null(x)) {
    return(NULL)
  }
  if (!is.character(x) || length(x) != 1 || is.na(x) || !nzchar(x)) {
    rule <- if (allow_null) "`NULL` or a single non-empty string" else "a single non-empty string"
    abort_arg(arg, rule, x, call)
  }
  x
}

# An optimizer's name: Keras puts it in its variables' paths, so it must not
# hold a "/".
check_name <- function(x, allow_null = FALSE, call = caller_env()) {
  x <- check_string(x, "name", allow_null = allow_null, call = call)
  if (!is.null(x) && grepl("/", x, fixed = TRUE)) {
    rule <- if (allow_null) "`NULL` or a single non-empty string" else "a single non-empty string"
    abort_arg("name", paste(rule, 'without "/"'), x, call)
  }
  x
}

# `NULL` or one of `values`.
check_choice <- function(x, arg, values, call = caller_env()) {
  if (is.null(x)) {
    return(NULL)
  }
  if (!is.character(x) || length(x) != 1 || !x %in% values) {
    rule <- paste0("`NULL` or one of ", paste0("\"", values, "\"", collapse = ", "))
    abort_arg(arg, rule, x, call)
  }
  x
}

# `NULL` or a character vector (or a list of strings) of regular expressions,
# as a list so that a single pattern reaches Python as a list of one string.
# Python's `re` applies them, so it judges them too: R's own syntax, such as
# "[[:alpha:]]", means something else there (and makes `re` warn).
as_patterns <- function(x, arg, call = caller_env()) {
  given <- x
  if (is.list(x) && !is.object(x) && all(vapply(x, is_string, logical(1)))) {
    x <- as.character(x)
  }
  if (is.null(x) || (is.character(x) && length(x) == 0)) {
    return(NULL)
  }
  if (!is.character(x) || anyNA(x) || !all(nzchar(x))) {
    abort_arg(arg, "`NULL` or a character vector of non-empty regular expressions", given, call)
  }
  for (pattern in x) {
    problem <- python_core()$`_checks`$regex_problem(pattern)
    if (!is.null(problem)) {
      received <- describe(pattern)
      cli::cli_abort(
        c(
          "{.arg {arg}} must hold regular expressions in Python's syntax, not {received}.",
          i = "Python's {.code re}: {problem}."
        ),
        call = call,
        class = "keraslion_error_argument"
      )
    }
  }
  as.list(x)
}

check_at_most_one <- function(args, call = caller_env()) {
  set <- names(Filter(Negate(is.null), args))
  if (length(set) > 1) {
    cli::cli_abort(
      c(
        "Only one of {.arg {names(args)}} can be set.",
        x = "You set {.arg {set}}."
      ),
      call = call,
      class = "keraslion_error_argument"
    )
  }
  invisible(args)
}

# Extra arguments in `...` must all be named ...
check_dots_named <- function(dots, call = caller_env()) {
  dot_names <- names(dots)
  if (length(dots) > 0 && (is.null(dot_names) || any(!nzchar(dot_names)))) {
    cli::cli_abort(
      "All arguments in {.arg ...} must be named.",
      call = call,
      class = "keraslion_error_argument"
    )
  }
  dots
}

# ... and each must be an argument that `fn`, a Python callable, accepts.
check_dots_known <- function(dots, fn, call = caller_env()) {
  if (length(dots) == 0) {
    return(dots)
  }
  parameters <- reticulate::import("inspect")$signature(fn)$parameters
  unknown <- setdiff(names(dots), setdiff(names(parameters), "kwargs"))
  if (length(unknown) > 0) {
    cli::cli_abort(
      "{cli::qty(unknown)}Unknown argument{?s} in {.arg ...}: {.arg {unknown}}.",
      call = call,
      class = "keraslion_error_argument"
    )
  }
  dots
}
