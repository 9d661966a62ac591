# The two entry points of the README. Both set up .venv first (idempotent).
MODEL ?= resnete
BOARD ?= pynq-z2
VENV  ?= .venv

.PHONY: setup build test test-fast clean

setup:
	./setup.sh

# Main job: the default model for the default board, as far as the installed tools allow.
# Exit code 3 means "stopped at a vendor-tool step" (e.g. no Vivado): everything before it is built.
build: setup
	$(VENV)/bin/bnnflow build $(MODEL) --board $(BOARD) --force; rc=$$?; [ $$rc -eq 0 ] || [ $$rc -eq 3 ]

test: setup
	$(VENV)/bin/python -m pytest -q

test-fast: setup
	$(VENV)/bin/python -m pytest -q -m "not slow and not build"

clean:
	rm -rf build
