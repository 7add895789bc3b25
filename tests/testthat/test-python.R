test_that("keraslion_available() answers TRUE or FALSE", {
  available <- keraslion_available()
  expect_true(isTRUE(available) || isFALSE(available))
  if (available) {
    expect_true(reticulate::py_module_available("keras"))
  }
})
