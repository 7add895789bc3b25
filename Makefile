# Two commands do all set-up on a fresh Debian 12 machine (as root):
#   make demo   train a classifier from R with optimizer_lion()
#   make test   every test suite; the last line is "N passed, N failed, N skipped"
SHELL := /bin/bash
VENV := .venv
PYTHON := $(CURDIR)/$(VENV)/bin/python

export RETICULATE_PYTHON := $(PYTHON)
# Every R process uses the project library first: keras3 and the reticulate it
# needs (tools/setup-keras3.sh installs them there), then the system's.
export R_LIBS := $(CURDIR)/.Rlib
export KERAS_BACKEND ?= jax
export TF_CPP_MIN_LOG_LEVEL := 3
export _R_CHECK_SYSTEM_CLOCK_ := 0
# Run the snapshot tests of error messages in R CMD check too.
export NOT_CRAN := true

.PHONY: setup demo test bench site document clean

setup: $(VENV)/.installed
	@tools/setup-apt.sh
	@tools/setup-keras3.sh

# Debian's packages first: on a fresh machine they bring python3 and its venv.
$(VENV)/.installed: tools/requirements.txt
	@tools/setup-apt.sh
	@test -x $(PYTHON) || python3 -m venv $(VENV)
	$(PYTHON) -m pip install --quiet --no-cache-dir -r tools/requirements.txt
	@touch $@

demo: setup
	Rscript tools/demo.R

test: setup
	tools/run-tests.sh

# Benchmark of the Lion step (bench/; BENCH_ARGS=--quick for a short run),
# then the memory of a step on 100M parameters, one process per case, then
# the int8 step fused into one kernel by PyTorch's compiler, JAX's step
# with cheaper int8 codes (a timing model), what each array of state costs
# a compiled step (JAX, TensorFlow), the int8 step with and without its C kernel on each backend,
# and PyTorch's step on many small variables, repeated.
bench: setup
	$(PYTHON) bench/bench.py $(BENCH_ARGS)
	$(PYTHON) bench/memory.py
	$(PYTHON) bench/int8_fused.py
	$(PYTHON) bench/int8_formats.py
	$(PYTHON) bench/state_arrays.py
	KERAS_BACKEND=torch $(PYTHON) bench/int8_kernel.py
	KERAS_BACKEND=jax $(PYTHON) bench/int8_kernel.py
	KERAS_BACKEND=tensorflow $(PYTHON) bench/int8_kernel.py
	KERAS_BACKEND=torch $(PYTHON) bench/torch_overhead.py

# The pkgdown site, built into docs/ offline (tools/build-site.R); its
# examples and vignettes run with the Python above.
site: setup
	Rscript tools/build-site.R

document: setup
	Rscript -e 'roxygen2::roxygenise()'

clean:
	rm -rf keraslion_*.tar.gz keraslion.Rcheck .test-results
