# The two commands (README): `make run` and `make test`. Both build .venv from nothing first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
NP ?= 3
OUT ?= runs/default-$(shell date +%Y%m%d-%H%M%S).h5
ARGS ?=

.PHONY: run test venv bench clean

venv: $(VENV)/.installed

$(VENV)/.installed: setup.py requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-dev.txt
	touch $@

run: venv
	@mkdir -p $(dir $(OUT))
	$(VENV)/bin/mpiexec -n $(NP) $(PY) -m mpi4py -m fedgmi_mpi run --out $(OUT) $(ARGS)

# Two pytest workers: most tests are single-process torch on one thread, so the second core
# would idle (serial: 1497 s here; -n 2: 1119 s, the same 407 passed). TEST_WORKERS=0 runs serially.
TEST_WORKERS ?= 2

test: venv
	$(PY) -m pytest -q $(if $(filter 0,$(TEST_WORKERS)),,-n $(TEST_WORKERS)) tests

bench: venv
	$(PY) benchmarks/round_speed.py

clean:
	rm -rf $(VENV) build *.egg-info
