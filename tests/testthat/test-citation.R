test_that("citation() offers the Lion paper and the package, without warnings", {
  expect_no_warning(cited <- citation("keraslion"))
  expect_length(cited, 2)
  expect_identical(unlist(cited$title)[[1]], "Symbolic Discovery of Optimization Algorithms")
  expect_identical(cited[[1]]$doi, "10.48550/arXiv.2302.06675")
  package <- cited[[2]]
  expect_identical(package$note, paste("R package version", packageVersion("keraslion")))
  expect_match(package$year, "^[0-9]{4}$")
  expect_match(format(package, style = "text"), "keraslion")
})
