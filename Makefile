# Thin wrapper: every target delegates to scripts/.
.PHONY: setup demo test bench lint clean

setup:
	bash scripts/setup-host.sh

demo: setup
	bash scripts/demo.sh

test: setup
	bash scripts/test.sh

bench: setup
	bash scripts/bench.sh $(SCENARIOS)

lint: setup
	.venv/bin/ruff check .
	.venv/bin/mypy

clean:
	rm -rf build bench-results .pytest_cache .ruff_cache .mypy_cache
