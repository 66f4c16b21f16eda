# Thin wrapper: every target delegates to scripts/.
.PHONY: setup demo test bench lint kernels clean

setup:
	bash scripts/setup-host.sh

demo: setup
	bash scripts/demo.sh

test: setup
	bash scripts/test.sh

bench: setup
	bash scripts/bench.sh $(SCENARIOS)

# make kernels KERNELS="6.1" for one kernel; "host" is the running kernel.
kernels: setup
	bash scripts/kernels.sh $(KERNELS)

lint: setup
	.venv/bin/ruff check .
	.venv/bin/mypy

clean:
	rm -rf build bench-results .pytest_cache .ruff_cache .mypy_cache
