# The main job: train a classifier from R with optimizer_lion(), then the same
# model with AdamW at matched settings, and compare held-out accuracy.
#
# Data: iris (ships with R), 150 flowers, 4 measurements, 3 species; a
# stratified 2/3 train, 1/3 test split.
# Run with `make demo` (which sets up Python and installs the package first).

install_and_attach <- function() {
  lib <- file.path(tempdir(), "keraslion-lib")
  dir.create(lib, showWarnings = FALSE)
  install.packages(".", lib = lib, repos = NULL, type = "source", quiet = TRUE)
  library(keraslion, lib.loc = lib)
}
install_and_attach()

keras <- reticulate::import("keras")
cat("Keras", keras$`__version__`, "on the", keras$backend$backend(), "backend\n\n")

set.seed(1)
test_rows <- unlist(lapply(split(seq_len(nrow(iris)), iris$Species), function(rows) {
  sample(rows, length(rows) / 3)
}))
x <- as.matrix(iris[, 1:4])
centre <- colMeans(x[-test_rows, ])
spread <- apply(x[-test_rows, ], 2, sd)
x <- scale(x, centre, spread)
y <- as.integer(iris$Species) - 1L

train <- function(optimizer, label, epochs = 60L) {
  keras$utils$set_random_seed(42L)
  model <- keras$Sequential(list(
    keras$Input(shape = list(4L)),
    keras$layers$Dense(32L, activation = "relu"),
    keras$layers$Dense(32L, activation = "relu"),
    keras$layers$Dense(3L, activation = "softmax")
  ))
  model$compile(
    optimizer = optimizer,
    loss = "sparse_categorical_crossentropy",
    metrics = list("accuracy")
  )
  cat(sprintf("== %s ==\n", label))
  model$fit(
    x[-test_rows, ], array(y[-test_rows]),
    epochs = epochs, batch_size = 16L, verbose = 2L,
    validation_data = list(x[test_rows, ], array(y[test_rows]))
  )
  score <- model$evaluate(x[test_rows, ], array(y[test_rows]), verbose = 0L)
  setNames(unlist(score), c("loss", "accuracy"))
}

# AdamW settings, and Lion's from them: learning rate / 3, weight decay x 3.
adamw <- list(learning_rate = 3e-3, weight_decay = 0.01)
lion <- lion_hparams_from_adamw(adamw$learning_rate, adamw$weight_decay)

lion_score <- train(
  optimizer_lion(learning_rate = lion$learning_rate, weight_decay = lion$weight_decay),
  sprintf("Lion (learning_rate = %g, weight_decay = %g)", lion$learning_rate, lion$weight_decay)
)
adamw_score <- train(
  keras$optimizers$AdamW(learning_rate = adamw$learning_rate, weight_decay = adamw$weight_decay),
  sprintf("AdamW (learning_rate = %g, weight_decay = %g)", adamw$learning_rate, adamw$weight_decay)
)

cat("\nHeld-out accuracy on", length(test_rows), "iris flowers after 60 epochs:\n")
print(round(rbind(Lion = lion_score, AdamW = adamw_score), 3))
