# Every target works from a fresh clone: the venv is made here, from the project's own files.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
# The demo gets a virtualenv of its own with the core and the small `demo` extra only: a
# fresh machine trying the quick start does not download TensorFlow or PyTorch.
DEMO_VENV ?= .venv-demo
DEMO_STAMP := $(DEMO_VENV)/.installed-stamp

.PHONY: venv test lint typecheck pytest demo bench clean

venv: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

lint: venv
	$(BIN)/ruff check src tests bench examples
	$(BIN)/ruff format --check src tests bench examples

typecheck: venv
	$(BIN)/mypy

pytest: venv
	$(BIN)/pytest -n 2 -q

test: lint typecheck pytest

$(DEMO_STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(DEMO_VENV)
	$(DEMO_VENV)/bin/python -m pip install --quiet -c constraints.txt -e '.[demo]'
	touch $(DEMO_STAMP)

demo: $(DEMO_STAMP)
	$(DEMO_VENV)/bin/python examples/demo.py

bench: venv
	$(BIN)/python bench/push_vs_cp.py
	$(BIN)/python bench/ls_many.py
	$(BIN)/python bench/serve_bench.py

clean:
	rm -rf $(VENV) $(DEMO_VENV) .mypy_cache .ruff_cache .pytest_cache

# gRPC stubs for the Open Inference Protocol (proto/grpc_predict_v2.proto). The fix-ups: the
# service module imports its messages from this package, and the messages live in a private
# descriptor pool, because tritonclient registers the same `inference.*` names in the default
# pool and one process may import both.
GENERATED := src/modelport/_generated

.PHONY: grpc
grpc: venv
	$(BIN)/python -m grpc_tools.protoc -Iproto --python_out=$(GENERATED) \
		--grpc_python_out=$(GENERATED) --pyi_out=$(GENERATED) proto/grpc_predict_v2.proto
	$(BIN)/python -c "import pathlib, sys; \
		fix = lambda p, a, b: p.write_text(p.read_text().replace(a, b, 1) if a in p.read_text() else sys.exit(f'{p}: {a!r} not found')); \
		d = pathlib.Path('$(GENERATED)'); \
		fix(d / 'grpc_predict_v2_pb2.py', '_descriptor_pool.Default()', '_descriptor_pool.DescriptorPool()'); \
		fix(d / 'grpc_predict_v2_pb2_grpc.py', 'import grpc_predict_v2_pb2 as', 'from . import grpc_predict_v2_pb2 as')"
