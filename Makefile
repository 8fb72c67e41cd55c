# Two commands do all the set-up on a fresh machine (Python 3.9+ with venv):
#   make book   - install, fetch the data, then build the whole book (executing every chapter) into _build/html
#   make test   - install, then run every test (unit tests, every notebook, the book build)
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

# What the book needs at full settings, as name:split[:n] (see python -m gi_tutorial.data --help).
# The first 20 test images of each dataset ship in the foolbox wheel; the Fashion-MNIST train split
# (the generator's training data, and the data GIML learns from) does not, so `make data` fetches it:
# already on disk, else Debian's dataset-fashion-mnist (as root with apt-get), else torchvision's download.
BOOK_DATA ?= cifar10:test:20 mnist:test:20 fashion_mnist:test fashion_mnist:train

.PHONY: install data book test lint student colab notebooks vendor browser-check benchmark peer-benchmark generator giml dp-utility ch6-dp-sgd-attack central-figure verify clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[offline,book,test,flower]"
	touch $(STAMP)

install: $(STAMP)

# Stops before anything executes, naming every source tried, when some data cannot be had.
data: $(STAMP)
	$(BIN)/python tools/debian_data.py $(BOOK_DATA)
	$(BIN)/python -m gi_tutorial.data --ensure $(BOOK_DATA)

# The chapters run side by side first, one per core, into the build's execution cache
# (tools/execute_book.py); the build then only renders them.
book: $(STAMP) data
	GI_TUTORIAL_PROGRESS=0 $(BIN)/python tools/execute_book.py
	GI_TUTORIAL_PROGRESS=0 $(BIN)/jupyter-book build . -W --keep-going

# Two pytest workers (pytest-xdist), each file on one worker; the book runs in the background beside them
# (tests/conftest.py), and the files that read it come last, in the collection's order (no reordering by size).
TEST_WORKERS ?= 2
test: $(STAMP)
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder

# ruff (configured in pyproject.toml): lint, and the formatter's check (`ruff format .` fixes the latter); run by CI before the tests
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# Student copies of the chapters (student/): solutions replaced by answer stubs, checkers kept
student: $(STAMP)
	$(BIN)/python tools/student_notebooks.py

# After editing a chapter: its install cell and badge (from _config.yml), then its Colab copy (colab/)
notebooks: $(STAMP)
	$(BIN)/python tools/sync_notebooks.py
	$(BIN)/python tools/colab_notebooks.py

colab: notebooks

# Re-fetch the pinned MathJax / widget-manager / RequireJS files into vendor/ (needs npm; committed)
vendor: $(STAMP)
	$(BIN)/python tools/vendor_js.py

# Headless Chromium on every chapter of _build/html (after make book): math, images, widgets, JS errors;
# screenshots in _build/screenshots/
browser-check: $(STAMP)
	$(BIN)/python tools/browser_check.py _build/html

benchmark: $(STAMP)
	$(BIN)/python benchmarks/run.py

# Side by side with breaching 0.1.2 on its own ResNet-18 case, in a separate venv under $GI_PEER_ROOT
# (default /tmp/gi-peer; never the project's .venv). About 70 minutes on one core; PEER_ARGS=--quick: a smoke test
peer-benchmark:
	$(PYTHON) benchmarks/peer.py $(PEER_ARGS)

# Re-train the shipped generator (about 10 minutes on one CPU thread; needs the Fashion-MNIST train split)
generator: $(STAMP)
	$(BIN)/python -m gi_tutorial.data --ensure fashion_mnist:train
	$(BIN)/python -m gi_tutorial.generators --steps 4000 --seed 0 --out gi_tutorial/checkpoints/fashion_mnist_dcgan.pt

# Re-run GIML's meta-training from the untrained generator and rewrite the shipped snapshots
# (about 15 minutes on one idle CPU thread; needs the Fashion-MNIST train split)
giml: $(STAMP)
	$(BIN)/python -m gi_tutorial.data --ensure fashion_mnist:train
	$(BIN)/python -m gi_tutorial.giml --steps 600 --seed 0

# Every chapter's verdicts re-checked on victim seeds and images the chapters do not use (benchmarks/verify_ch*.py,
# two at a time); exits non-zero when a verdict does not hold. About 30 minutes on two cores; not part of make test.
verify: $(STAMP)
	$(BIN)/python -m gi_tutorial.data --ensure fashion_mnist:train fashion_mnist:test
	$(BIN)/python benchmarks/verify.py

# Chapter 4's central figure: victims x seeds x batch sizes x attacks, shipped in gi_tutorial/results/central_figure.json
central-figure: $(STAMP)
	$(BIN)/python -m gi_tutorial.data --ensure fashion_mnist:train fashion_mnist:test
	$(BIN)/python benchmarks/central_figure.py

# Chapter 6's utility curve: DP-SGD (Opacus) and DP-FedAvg on Fashion-MNIST, shipped in gi_tutorial/results/
dp-utility: $(STAMP)
	$(BIN)/python -m gi_tutorial.data --ensure fashion_mnist:train fashion_mnist:test
	$(BIN)/python benchmarks/dp_utility.py --only dp_sgd dp_fedavg

# Chapter 6's DP-SGD audit: GI-x, GI-z and GIAS against Opacus DP-SGD updates at each noise multiplier, shipped in
# gi_tutorial/results/ch6_dp_sgd_attack.json
ch6-dp-sgd-attack: $(STAMP)
	$(BIN)/python -m gi_tutorial.data --ensure fashion_mnist:train fashion_mnist:test
	$(BIN)/python benchmarks/ch6_dp_sgd_attack.py

clean:
	rm -rf _build student
