# sparknet: the two commands a newcomer needs.
#
#   make run    set everything up, then train LeNet on 2 local Spark workers
#   make test   set everything up, then run the test suite
#
# "Set everything up" installs what is missing, and only that: the Debian
# packages Caffe builds against (apt-get), a virtual environment in .venv with
# the pinned Python packages, and the Caffe build (cached outside the clone in
# $SPARKNET_CACHE, default ~/.cache/sparknet, keyed by the source package's
# sha256, so it is compiled once per machine).

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

DEBIAN_PACKAGES := build-essential pkg-config protobuf-compiler libprotobuf-dev \
	libgoogle-glog-dev libgflags-dev libboost-system-dev libboost-thread-dev \
	libboost-filesystem-dev libhdf5-dev libopenblas-dev liblmdb-dev libleveldb-dev \
	libsnappy-dev libgtest-dev patch ccache

# The BLAS libcaffe.so is linked to (caffe/build.py: openblas, system or mkl);
# each has its own Caffe cache entry, and changing it re-links the extension.
SPARKNET_BLAS ?= system
export SPARKNET_BLAS
# Caffe's sources patched (all, the default) or as released (none): caffe/patches/.
SPARKNET_CAFFE_PATCHES ?= all
export SPARKNET_CAFFE_PATCHES

BUILD_INPUTS := setup.py setup.cfg pyproject.toml caffe/build.py caffe/caffe.mk \
	caffe/sparknet_fatal.hpp caffe/blas_shim.c ccaffe/ccaffe.cpp ccaffe/ccaffe.hpp sparknet/engine/_caffe.pyx \
	sparknet/data/_kernels.pyx sparknet/data/_crop_kernel.h $(wildcard caffe/patches/*.patch)

# pytest-xdist workers for make test / test-fast: one per core by default. Each test
# module runs whole on one worker (--dist loadfile), so a module's shared fixtures
# (a fitted model, a cluster, a Spark session) are built once; modules start heaviest
# first (tests/conftest.py HEAVIEST_FIRST), not in xdist's order by test count.
TEST_WORKERS ?= $(shell nproc 2>/dev/null || echo 2)
PYTEST := $(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder

.PHONY: run test test-fast lint build deps env bench bench-env wheel pack clean

run: build
	$(PY) examples/lenet_app.py --workers 2

test: build
	$(VENV)/bin/ruff check .
	$(PYTEST) tests

# For development: everything but whole runs as users start them (apps, the README, the
# command line, benchmarks, clusters, packaging; tests/conftest.py SLOW_MODULES).
test-fast: build
	$(VENV)/bin/ruff check .
	$(PYTEST) -m "not slow" tests

bench: build bench-env
	for b in bench/*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

build: $(VENV)/.built

lint: env
	$(VENV)/bin/ruff check .

env: $(VENV)/.installed

# Debian packages: checked every time (cheap), installed only when missing.
deps:
	@missing=""; \
	for p in $(DEBIAN_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; \
	done; \
	command -v java >/dev/null || missing="$$missing openjdk-17-jre-headless"; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  $(SUDO) apt-get update -q && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q --no-install-recommends $$missing; \
	fi

# Every module is byte-compiled here, once: a process that imports pyspark, numpy and
# sparknet from source takes 2.6 CPU-seconds to start, 0.8 from .pyc files, and where
# PYTHONDONTWRITEBYTECODE is set Python never caches what it compiles on import. pip
# compiles on one core (37 of this step's 68 s on 2 cores), compileall -j 0 on all (18 s).
$(VENV)/.installed: requirements.txt requirements-dev.txt | deps
	[ -x $(PY) ] || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q --no-compile -r requirements-dev.txt
	$(PY) -m compileall -q -j 0 $$($(PY) -c 'import sysconfig; print(sysconfig.get_path("purelib"))') >/dev/null
	touch $@

# Benchmark-only peers (PyTorch CPU, MKL): bench/peers.py compares against them.
bench-env: $(VENV)/.bench-installed

$(VENV)/.bench-installed: requirements-bench.txt $(VENV)/.installed
	$(PY) -m pip install -q -r requirements-bench.txt
	touch $@

$(VENV)/.blas-$(SPARKNET_BLAS): | $(VENV)/.installed
	rm -f $(VENV)/.blas-*
	touch $@

$(VENV)/.patches-$(SPARKNET_CAFFE_PATCHES): | $(VENV)/.installed
	rm -f $(VENV)/.patches-*
	touch $@

# sparknet's own extensions (the Cython facade over Caffe, the crop kernels) compile
# through ccache, keyed by their sources and flags, not by where the clone is: a clean
# clone of unchanged sources (CI) and `make wheel` after `make build` find them compiled
# (about 25 s each on 2 cores otherwise).
EXT_CCACHE := CC="ccache gcc" CXX="ccache g++" CCACHE_BASEDIR=$(CURDIR) CCACHE_NOHASHDIR=1

# Caffe is built (or found in the cache) by caffe/build.py on its own first, so that its
# progress (objects compiled / to compile, time taken) reaches the terminal: pip -q would
# hide setup.py's output for the minutes the compile takes. setup.py then finds it cached.
$(VENV)/.built: $(VENV)/.installed $(VENV)/.blas-$(SPARKNET_BLAS) \
		$(VENV)/.patches-$(SPARKNET_CAFFE_PATCHES) $(BUILD_INPUTS) | deps
	$(PY) caffe/build.py
	$(EXT_CCACHE) $(PY) -m pip install -q --no-build-isolation --no-deps -e .
	$(PY) -m compileall -q -j 0 sparknet >/dev/null
	touch $@

# A self-contained wheel: libcaffe and the Debian libraries it links are copied
# in (auditwheel), so cluster nodes need neither a compiler nor those packages.
# It is built from the sources for SPARKNET_BLAS, not from the editable install
# in .venv, so packing for another BLAS leaves this checkout's build as it is.
# DIST is where wheel and pack write (default dist/): give a second BLAS its
# own, e.g. SPARKNET_BLAS=mkl make pack DIST=dist/mkl, so neither replaces the
# other's archive.
DIST ?= dist
ifeq ($(strip $(DIST)),)
$(error DIST is empty: name the folder make wheel/pack write to (default dist))
endif
PY_SOURCES := $(shell find sparknet -name '*.py' -o -name '*.pyx')
# The BLAS and patch set the wheel in DIST was built for: changing either rebuilds it.
DIST_CONFIG := $(DIST)/.config-$(SPARKNET_BLAS)-$(SPARKNET_CAFFE_PATCHES)

wheel: $(DIST)/.wheel

$(DIST_CONFIG): | $(VENV)/.installed
	mkdir -p $(DIST) && rm -f $(DIST)/.config-*
	touch $@

$(DIST)/.wheel: $(VENV)/.installed $(DIST_CONFIG) $(BUILD_INPUTS) $(PY_SOURCES) | deps
	rm -rf $(DIST)/raw $(DIST)/sparknet-*.whl
	$(PY) caffe/build.py
	$(EXT_CCACHE) $(PY) -m pip wheel -q --no-build-isolation --no-deps -w $(DIST)/raw .
	PATH=$(CURDIR)/$(VENV)/bin:$$PATH $(VENV)/bin/auditwheel repair -w $(DIST) \
	  $(if $(filter mkl,$(SPARKNET_BLAS)),--exclude libmkl_rt.so.3) $(DIST)/raw/sparknet-*.whl
	rm -rf $(DIST)/raw
	touch $@

# A packed virtual environment for executors (spark-submit --archives
# dist/sparknet-env.tar.gz#env, spark.pyspark.python=./env/bin/python). Spark
# ships pyspark itself to executors, so the pack leaves it out. With
# SPARKNET_BLAS=mkl it holds the pinned mkl (and the intel-openmp and tbb it
# brings), whose libmkl_rt.so.3 opens its computational libraries from its own
# directory at run time: the whole of mkl goes in, not what auditwheel sees.
#
# Two knobs trade the archive's size and executors' first imports for packing time:
# PACK_COMPRESS_LEVEL (gzip level 0-9, default 4 as venv-pack's own) and PACK_BYTECODE
# (1, the default: pip writes each module's .pyc into the archive; 0: it does not, and
# executors compile what they import). The defaults suit shipping; tests/test_deploy.py,
# which proves that the archive runs, not how small it is, packs with 0 and 0. The
# archive records the pair it was packed with ($(DIST)/.pack-*), so a later plain
# `make pack` repacks rather than leave a test's uncompressed archive in place.
PACK_COMPRESS_LEVEL ?= 4
PACK_BYTECODE ?= 1
ifeq ($(filter $(PACK_COMPRESS_LEVEL),0 1 2 3 4 5 6 7 8 9),)
$(error PACK_COMPRESS_LEVEL=$(PACK_COMPRESS_LEVEL): give a gzip level from 0 to 9 (default 4))
endif
ifeq ($(filter $(PACK_BYTECODE),0 1),)
$(error PACK_BYTECODE=$(PACK_BYTECODE): give 1 (pack .pyc files, the default) or 0)
endif
PACK_CONFIG := $(DIST)/.pack-$(PACK_COMPRESS_LEVEL)-$(PACK_BYTECODE)
PIP_COMPILE := $(if $(filter 0,$(PACK_BYTECODE)),--no-compile,--compile)

pack: $(DIST)/sparknet-env.tar.gz

$(PACK_CONFIG): | $(VENV)/.installed
	mkdir -p $(DIST) && rm -f $(DIST)/.pack-*
	touch $@

$(DIST)/sparknet-env.tar.gz: $(DIST)/.wheel $(PACK_CONFIG) requirements.txt \
		$(if $(filter mkl,$(SPARKNET_BLAS)),requirements-bench.txt)
	rm -rf $(DIST)/env && $(PYTHON) -m venv $(DIST)/env
	$(DIST)/env/bin/pip install -q $(PIP_COMPILE) --no-deps $(DIST)/sparknet-*manylinux*.whl
	grep -v -e '^pyspark' -e '^#' requirements.txt | $(DIST)/env/bin/pip install -q $(PIP_COMPILE) -r /dev/stdin
	$(if $(filter mkl,$(SPARKNET_BLAS)),grep '^mkl==' requirements-bench.txt | $(DIST)/env/bin/pip install -q $(PIP_COMPILE) -r /dev/stdin)
	$(VENV)/bin/venv-pack -q -f --compress-level $(PACK_COMPRESS_LEVEL) -p $(DIST)/env \
	  -o $(DIST)/.partial-env.tar.gz && mv $(DIST)/.partial-env.tar.gz $@
	@echo "packed: $@ ($$(($$(stat -c %s $@) / 1000000)) MB)"

clean:
	rm -rf build dist sparknet/engine/_caffe.cpp sparknet/engine/*.so sparknet/proto/caffe_pb2.py* \
	  sparknet/proto/caffe.proto $(VENV)/.built
