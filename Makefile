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

# The image build (tests/test_docker.py, ~5 min of downloads and podman I/O) runs beside the other
# tests, in its own pytest session and temp folder; its report follows theirs.
test: setup
	@log=$$(mktemp); tmp=$$(mktemp -d); \
	$(VENV)/bin/python -m pytest -q -p no:cacheprovider --basetemp="$$tmp" -m image >"$$log" 2>&1 & image=$$!; \
	$(VENV)/bin/python -m pytest -q -m "not image"; rc=$$?; \
	wait $$image; image_rc=$$?; \
	echo "--- the Docker image test (pytest -m image):"; cat "$$log"; rm -rf "$$log" "$$tmp"; \
	[ $$rc -eq 0 ] && [ $$image_rc -eq 0 ]

test-fast: setup
	$(VENV)/bin/python -m pytest -q -m "not slow and not build"

clean:
	rm -rf build
