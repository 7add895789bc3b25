test_that("describe() shows values briefly", {
  expect_identical(describe(NULL), "`NULL`")
  expect_identical(describe(1.5), "`1.5`")
  expect_identical(describe(NA), "`NA`")
  expect_identical(describe("a"), "the string \"a\"")
  expect_identical(describe(c(1, 2)), "a double vector of length 2")
  expect_identical(describe(list(1)), "a list of length 1")
  expect_identical(describe(mean), "a function")
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
  expect_identical(as_number(f, "x", 0, allow_callable = TRUE), f)
  expect_error(as_number(f, "x", 0), "function")
})

test_that("as_whole_number() accepts whole doubles and integers only", {
  expect_identical(as_whole_number(10, "n", 1), 10L)
  expect_identical(as_whole_number(10L, "n", 1), 10L)
  expect_null(as_whole_number(NULL, "n", 1))
  expect_error(as_whole_number(2.5, "n", 1), "`2.5`")
  expect_error(as_whole_number(1e10, "n", 1), class = "keraslion_error_argument")
  expect_error(as_whole_number(0, "n", 1), ">= 1")
})

test_that("check helpers pass good values through", {
  expect_true(check_flag(TRUE, "f"))
  expect_identical(check_string("a", "s"), "a")
  expect_identical(check_choice("bfloat16", "d", c("float32", "bfloat16")), "bfloat16")
  expect_identical(check_at_most_one(list(a = NULL, b = 1)), list(a = NULL, b = 1))
  expect_identical(check_dots_named(list(a = 1)), list(a = 1))
  expect_identical(check_dots_known(list(), NULL), list())
  expect_error(check_dots_named(list(1)), "must be named")
})
