# Two commands do all the set-up on a fresh machine (Python 3.9+ with venv):
#   make book   - install, then build the whole book (executing every chapter) into _build/html
#   make test   - install, then run every test (unit tests, every notebook, the book build)
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install book test student benchmark clean

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

clean:
	rm -rf _build student
