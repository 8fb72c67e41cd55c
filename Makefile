# Two commands do all the set-up on a fresh machine (Python 3.9+ with venv):
#   make book   - install, then build the whole book (executing every chapter) into _build/html
#   make test   - install, then run every test (unit tests, every notebook, the book build)
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install book test student benchmark generator clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[offline,book,test]"
	touch $(STAMP)

install: $(STAMP)

book: $(STAMP)
	GI_TUTORIAL_PROGRESS=0 $(BIN)/jupyter-book build . -W --keep-going

test: $(STAMP)
	$(BIN)/python -m pytest

student: $(STAMP)
	$(BIN)/python tools/student_notebooks.py

benchmark: $(STAMP)
	$(BIN)/python benchmarks/run.py

# Re-train the shipped generator (about 10 minutes on one CPU thread; needs the Fashion-MNIST train split)
generator: $(STAMP)
	$(BIN)/python -m gi_tutorial.generators --steps 4000 --seed 0 --out gi_tutorial/checkpoints/fashion_mnist_dcgan.pt

clean:
	rm -rf _build student
