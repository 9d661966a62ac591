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

# Two long, mostly self-contained parts run beside the rest, each in its own pytest session and temp
# folder, reports after the rest's: the Docker image build (tests/test_docker.py, downloads and podman
# I/O) and `verify --sim` of the three default models (tests/test_sim_defaults.py, g++/Verilator
# compiles, cached across runs by ccache in $$BNNFLOW_CCACHE_DIR).
BESIDE := image simdefaults
REST   := not image and not simdefaults

test: setup
	@dir=$$(mktemp -d); pids=""; \
	for m in $(BESIDE); do \
	  mkdir "$$dir/$$m"; \
	  $(VENV)/bin/python -m pytest -q -p no:cacheprovider --basetemp="$$dir/$$m/tmp" -m "$$m" >"$$dir/$$m.log" 2>&1 & \
	  pids="$$pids $$!"; \
	done; \
	$(VENV)/bin/python -m pytest -q -m "$(REST)"; rc=$$?; \
	for p in $$pids; do wait $$p || rc=1; done; \
	for m in $(BESIDE); do echo "--- pytest -m $$m:"; cat "$$dir/$$m.log"; done; \
	rm -rf "$$dir"; exit $$rc

test-fast: setup
	$(VENV)/bin/python -m pytest -q -m "not slow and not build"

clean:
	rm -rf build
