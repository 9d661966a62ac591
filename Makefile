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

# Four pytest sessions side by side, each in its own temp folder, so both cores stay busy: the Docker
# image build (tests/test_docker.py: downloads and podman I/O; the sweeps' Dask clusters, the DDP,
# GPU-job and distillation runs, the tie guard's and the user networks' training tests go beside it, marker
# beside_image, to use the cores it leaves idle; that session ended minutes before the others), `verify
# --sim` of the three default models (tests/test_sim_defaults.py: g++/Verilator compiles, cached across
# runs by ccache in $$BNNFLOW_CCACHE_DIR) with the folding/FIFO tests that share their builds (marker
# simdefaults, added by tests/conftest.py), the tests that need no shared build (training, user networks,
# ...), and in front the tests on the session-wide tiny/default builds (tests/conftest.py; built once) with
# those marked beside_builds (the fast engine's training tests, there so the sessions end together). Each
# prints its slowest tests; the side sessions' reports follow the front one's, then the tests that cost the
# most CPU seconds in all sessions together (tests/conftest.py, BNNFLOW_TEST_CPU): what CI time is made of.
# OMP_WAIT_POLICY=PASSIVE: four sessions share two cores, and torch's OpenMP threads would otherwise spin
# after every parallel region on a core another session is waiting for.
BESIDE_MARKS := image or beside_image|simdefaults|not image and not beside_image and not simdefaults and not shared_builds and not beside_builds
FRONT        := not image and not beside_image and not simdefaults and (shared_builds or beside_builds)
PYTEST       := $(VENV)/bin/python -m pytest -q -p no:cacheprovider --durations=15

test: setup
	@dir=$$(mktemp -d); mkdir "$$dir/cpu"; export BNNFLOW_TEST_CPU="$$dir/cpu" OMP_WAIT_POLICY=PASSIVE; \
	pids=""; i=0; marks='$(BESIDE_MARKS)'; \
	IFS='|'; for m in $$marks; do \
	  i=$$((i+1)); mkdir "$$dir/$$i"; echo "$$m" > "$$dir/$$i.mark"; \
	  $(PYTEST) --basetemp="$$dir/$$i/tmp" -m "$$m" >"$$dir/$$i.log" 2>&1 & \
	  pids="$$pids $$!"; \
	done; unset IFS; \
	$(PYTEST) -m "$(FRONT)"; rc=$$?; \
	for p in $$pids; do wait $$p || rc=1; done; \
	for j in $$(seq 1 $$i); do echo "--- pytest -m '$$(cat $$dir/$$j.mark)':"; cat "$$dir/$$j.log"; done; \
	echo "--- CPU seconds per test, all sessions (a test's share includes the shared builds it set up):"; \
	sort -rn "$$dir"/cpu/*.tsv | head -15; \
	awk -F'\t' '{s += $$1; n++} END {printf "%.0f CPU seconds in %d tests\n", s, n}' "$$dir"/cpu/*.tsv; \
	rm -rf "$$dir"; exit $$rc

test-fast: setup
	$(VENV)/bin/python -m pytest -q -m "not slow and not build"

clean:
	rm -rf build
