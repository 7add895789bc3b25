test_that("describe() shows values briefly", {
  expect_identical(describe(NULL), "`NULL`")
  expect_identical(describe(1.5), "`1.5`")
  expect_identical(describe(NA), "`NA`")
  expect_identical(describe("a"), "the string \"a\"")
  expect_identical(describe(c(1, 2)), "a double vector of length 2")
  expect_identical(describe(list(1)), "a list of length 1")
  expect_identical(describe(mean), "a function")
})

test_that("describe() shows a number with the digits that tell it from its neighbours", {
  # With 15 digits, 1 + 2^-52 showed as `1`, which the range allows.
  expect_identical(describe(1 + 2^-52), "`1.0000000000000002`")
  expect_identical(describe(0.1), "`0.1`")
  expect_identical(describe(2^53 + 2), "`9007199254740994`")
  expect_error(as_number(1 + 2^-52, "beta_1", 0, 1, upper_closed = TRUE), "not `1.0000000000000002`")
  # With a decimal comma, too: the digits are chosen by reading the number back.
  withr::local_options(OutDec = ",")
  expect_no_warning(expect_identical(describe(-0.1), "`-0,1`"))
  expect_identical(describe(1 + 2^-52), "`1,0000000000000002`")
})

test_that("describe() names a classed value by its class, not its contents", {
  expect_identical(describe(factor("a")), "a factor")
  expect_identical(describe(factor(c("a", "b"))), "a factor")
  expect_identical(describe(as.Date("2024-01-01")), "a <Date> object")
  expect_identical(describe(as.POSIXct("2024-01-01", tz = "UTC")), "a <POSIXct> object")
  expect_identical(describe(data.frame(x = 1)), "a data frame")
  expect_identical(describe(structure(0.1, class = "units")), "a <units> object")
  expect_identical(describe(methods::getClass("numeric")), "a <classRepresentation> object")
  expect_identical(describe(sum), "the primitive function `sum()`")
  expect_identical(describe(`[`), "the primitive function `[()`")
})

test_that("as_number() checks the interval and converts to double", {
  expect_identical(as_number(1L, "x", 0), 1)
  expect_identical(as_number(0, "x", 0), 0)
  expect_error(as_number(0, "x", 0, lower_closed = FALSE), class = "keraslion_error_argument")
  expect_identical(as_number(1, "x", 0, 1, upper_closed = TRUE), 1)
  expect_error(as_number(1, "x", 0, 1), "in \\[0, 1\\)")
  expect_null(as_number(NULL, "x", 0, allow_null = TRUE))
  expect_error(as_number(NULL, "x", 0), "not `NULL`")
  expect_error(as_number(TRUE, "x", 0), class = "keraslion_error_argument")
  f <- function() 1
  expect_identical(as_number(f, "x", 0, allow_callable = TRUE)(), 1)
  # An NA returned reaches Python as NaN (reticulate passes a logical NA as True).
  expect_identical(as_number(function() NA, "x", 0, allow_callable = TRUE)(), NA_real_)
  expect_identical(as_number(function() NA_integer_, "x", 0, allow_callable = TRUE)(), NA_real_)
  expect_error(as_number(f, "x", 0), "function")
})

test_that("a function that can be called with no arguments is a callable", {
  dots <- function(...) 1e-3
  default <- function(scale = 1) scale * 1e-3
  both <- function(scale = 1, ...) scale * 1e-3
  expect_identical(as_number(dots, "x", 0, allow_callable = TRUE)(), 1e-3)
  expect_identical(as_number(default, "x", 0, allow_callable = TRUE)(), 1e-3)
  expect_identical(as_number(both, "x", 0, allow_callable = TRUE)(), 1e-3)
  expect_error(
    as_number(function(step, ...) 1, "x", 0, allow_callable = TRUE),
    "not a function with required argument `step`",
    class = "keraslion_error_argument"
  )
  # A primitive reaches Python as a capsule, not as a function.
  expect_error(
    as_number(sum, "x", 0, allow_callable = TRUE),
    "not the primitive function `sum\\(\\)`",
    class = "keraslion_error_argument"
  )
})

test_that("with float32 = TRUE, numbers that float32 rounds to 0 or Inf are refused", {
  expect_identical(as_number(0, "x", 0, float32 = TRUE), 0)
  # The extremes that float32 still holds: its smallest subnormal (and a
  # little less, which rounds up to it) and its largest finite value (and a
  # little more, which rounds down to it).
  expect_identical(as_number(2^-149, "x", 0, float32 = TRUE), 2^-149)
  expect_identical(as_number(2^-150 * 1.0000001, "x", 0, float32 = TRUE), 2^-150 * 1.0000001)
  largest <- (2 - 2^-23) * 2^127
  expect_identical(as_number(largest, "x", 0, float32 = TRUE), largest)
  expect_identical(as_number(2^128 - 2^103 - 2^80, "x", 0, float32 = TRUE), 2^128 - 2^103 - 2^80)
  expect_error(as_number(2^-150, "x", 0, float32 = TRUE), "rounds to 0",
               class = "keraslion_error_argument")
  expect_error(as_number(1e-46, "x", 0, float32 = TRUE), "rounds to 0",
               class = "keraslion_error_argument")
  expect_error(as_number(2^128 - 2^103, "x", 0, float32 = TRUE), "rounds to infinity")
  expect_error(as_number(1e39, "x", 0, float32 = TRUE), "rounds to infinity")
  # Without float32 = TRUE (the betas), such numbers are kept.
  expect_identical(as_number(1e-50, "x", 0), 1e-50)
})

test_that("as_whole_number() accepts whole doubles and integers only", {
  expect_identical(as_whole_number(10, "n", 1), 10L)
  expect_identical(as_whole_number(10L, "n", 1), 10L)
  expect_null(as_whole_number(NULL, "n", 1))
  expect_error(as_whole_number(2.5, "n", 1), "`2.5`")
  expect_error(as_whole_number(1e10, "n", 1), class = "keraslion_error_argument")
  expect_error(as_whole_number(0, "n", 1), "from 1 to 2147483647, not `0`")
  # The rule names the upper limit too, so a larger whole number is not
  # refused as though it were not one.
  expect_identical(as_whole_number(2147483647, "n", 1), .Machine$integer.max)
  expect_error(as_whole_number(2^31, "n", 1), "from 1 to 2147483647, not `2147483648`")
})

test_that("patterns may come as a list of strings", {
  skip_if_no_keras()
  expect_identical(as_patterns(list("bias", "norm"), "p"), list("bias", "norm"))
  expect_identical(as_patterns(c("bias", "norm"), "p"), list("bias", "norm"))
  expect_null(as_patterns(list(), "p"))
  expect_error(as_patterns(list("bias", 1), "p"), "a list of length 2", class = "keraslion_error_argument")
  expect_error(as_patterns(list(c("a", "b")), "p"), class = "keraslion_error_argument")
  expect_error(as_patterns(list("bias", NA_character_), "p"), "not a list of length 2",
               class = "keraslion_error_argument")
})

test_that("a flag may be a NumPy bool or a 0-d bool array, not a number", {
  skip_if_no_keras()
  np <- reticulate::import("numpy", convert = FALSE)
  expect_true(check_flag(np$bool_(TRUE), "f"))
  expect_false(check_flag(np$array(FALSE), "f"))
  expect_error(check_flag(np$int64(1L), "f"), "<numpy.int64>", class = "keraslion_error_argument")
  expect_error(check_flag(np$array(c(TRUE, FALSE)), "f"), class = "keraslion_error_argument")
  # Not bools: NumPy's missing value, a record with a field called "bool".
  masked <- np$ma$masked_array(np$array(TRUE), mask = TRUE)
  expect_error(check_flag(masked, "f"), "MaskedArray", class = "keraslion_error_argument")
  record <- np$zeros(list(), dtype = list(reticulate::tuple("bool", "f8")))
  expect_error(check_flag(record, "f"), class = "keraslion_error_argument")
})

test_that("a variable, or a tensor Python cannot read, is not a flag", {
  skip_if_no_keras()
  keras <- keras_module()
  variable <- keras$Variable(TRUE, dtype = "bool", trainable = FALSE)
  expect_error(check_flag(variable, "cautious"), "`cautious` must be", class = "keraslion_error_argument")
  if (keras$backend$backend() == "torch") {
    torch <- reticulate::import("torch")
    meta <- torch$tensor(TRUE, device = "meta")
    expect_error(check_flag(meta, "cautious"), class = "keraslion_error_argument")
  }
})

test_that("check helpers pass good values through", {
  expect_true(check_flag(TRUE, "f"))
  expect_identical(check_flag(matrix(TRUE), "f"), TRUE)
  expect_identical(check_flag(array(FALSE, dim = 1), "f"), FALSE)
  expect_identical(check_string("a", "s"), "a")
  expect_identical(check_choice("bfloat16", "d", c("float32", "bfloat16")), "bfloat16")
  expect_identical(check_at_most_one(list(a = NULL, b = 1)), list(a = NULL, b = 1))
  expect_identical(check_dots_named(list(a = 1)), list(a = 1))
  expect_identical(check_dots_known(list(), NULL), list())
  expect_error(check_dots_named(list(1)), "must be named")
})
