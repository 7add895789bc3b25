test_that("lion_hparams_from_adamw() keeps learning_rate * weight_decay", {
  hp <- lion_hparams_from_adamw(1e-3, 0.01)
  expect_equal(hp, list(learning_rate = 1e-3 / 3, weight_decay = 0.03))
  hp10 <- lion_hparams_from_adamw(3e-4, 0.1, factor = 10)
  expect_equal(hp10$learning_rate * hp10$weight_decay, 3e-4 * 0.1)
  expect_equal(hp10$learning_rate, 3e-5)
})

test_that("lion_hparams_from_adamw() checks its arguments", {
  expect_snapshot(error = TRUE, {
    lion_hparams_from_adamw(0, 0.01)
    lion_hparams_from_adamw(1e-3, -1)
    lion_hparams_from_adamw(1e-3, 0.01, factor = 0.5)
  })
  # Results optimizer_lion() would refuse are refused here.
  expect_error(
    lion_hparams_from_adamw(1e-3, 1e38, factor = 10),
    "Lion's .weight_decay. would be 1e\\+39",
    class = "keraslion_error_argument"
  )
  expect_error(lion_hparams_from_adamw(1e-3, 1e308, factor = 10), "weight_decay. would be Inf")
})

test_that("a schedule given as AdamW's learning rate is named as one", {
  skip_if_no_keras()
  schedule <- keras_module()$optimizers$schedules$ExponentialDecay(1e-3, 10L, 0.9)
  # reticulate makes it an R function too; it was called "a function".
  expect_error(
    lion_hparams_from_adamw(schedule, 0.01),
    "not a Python object of class <.*ExponentialDecay>",
    class = "keraslion_error_argument"
  )
})

test_that("R and Python agree, and the result feeds optimizer_lion()", {
  skip_if_no_keras()
  from_python <- keraslion:::python_core()$lion_hparams_from_adamw(1e-3, 0.01, factor = 5)
  expect_equal(lion_hparams_from_adamw(1e-3, 0.01, factor = 5), from_python)
  opt <- do.call(optimizer_lion, lion_hparams_from_adamw(1e-3, 0.01))
  expect_equal(opt$get_config()$weight_decay, 0.03)
})
