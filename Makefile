# One-command set-up. `make quickstart` and `make test` create .venv when missing, install the pinned set
# once (a stamp file makes a second install a no-op) and then run.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.sefar-installed
OUT    ?= outputs/quickstart

.PHONY: quickstart test install clean-venv

install: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[test]"
	@touch $(STAMP)

quickstart: $(STAMP)
	$(BIN)/sefar quickstart --out $(OUT)

test: $(STAMP)
	$(BIN)/python -m pytest -q

clean-venv:
	rm -rf $(VENV)
