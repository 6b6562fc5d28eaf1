# Compiles Caffe's C++ sources into one shared library. Driven by caffe/build.py,
# which unpacks the pinned source package and passes the variables below:
#   SRC     unpacked Caffe source tree (with stale caffe.pb.{h,cc} removed)
#   OUT     install prefix (lib/, include/, obj/, bin/)
#   FATAL   path of sparknet_fatal.hpp, force-included into every source
#   CUDA    1 for a GPU build (needs nvcc), 0 for CPU_ONLY
#   BLAS    which BLAS libcaffe.so is linked to (the objects do not depend on it):
#           system    Debian's libopenblas
#           openblas  PyPI scipy-openblas32's libscipy_openblas.so, copied into
#                     $(OUT)/lib by build.py (found next to libcaffe.so at run time)
#           mkl       PyPI mkl's libmkl_rt.so.3 in BLAS_DIR; libcaffe.so records no
#                     path to it (the build's environment is not the user's):
#                     sparknet.engine loads the one of the running interpreter's
#                     environment first. Only the caffe tool gets an rpath to BLAS_DIR.
#   BLAS_DIR  the directory of that library (openblas, mkl)
CUDA ?= 0
BLAS ?= system
BLAS_DIR ?=
NVCC ?= nvcc
CXX ?= g++
CC ?= gcc
BLAS_SHIM ?= $(dir $(lastword $(MAKEFILE_LIST)))blas_shim.c
OBJ := $(OUT)/obj
GEN := $(OUT)/include/caffe/proto

CPP_SRCS := $(wildcard $(SRC)/src/caffe/*.cpp $(SRC)/src/caffe/layers/*.cpp \
                       $(SRC)/src/caffe/solvers/*.cpp $(SRC)/src/caffe/util/*.cpp)
CU_SRCS := $(wildcard $(SRC)/src/caffe/layers/*.cu $(SRC)/src/caffe/solvers/*.cu \
                      $(SRC)/src/caffe/util/*.cu)
OBJS := $(patsubst $(SRC)/src/caffe/%.cpp,$(OBJ)/%.o,$(CPP_SRCS)) $(OBJ)/proto/caffe.pb.o

HDF5_INC := $(shell pkg-config --cflags-only-I hdf5)
HDF5_LIB := $(shell pkg-config --libs hdf5) -lhdf5_hl
DEFS := -DNDEBUG -DUSE_LMDB -DUSE_LEVELDB
INCS := -I$(OUT)/include -I$(SRC)/include $(HDF5_INC) -I/usr/include/x86_64-linux-gnu
LIBS := -lglog -lgflags -lprotobuf -lboost_system -lboost_thread -lboost_filesystem \
        $(HDF5_LIB) -llmdb -lleveldb -lpthread

# Caffe calls cblas_* and the facade openblas_*_num_threads; blas_shim.c maps
# them for the BLAS libraries that name them otherwise.
SHIM :=
TOOL_RPATH :=
ifeq ($(BLAS),system)
  BLAS_LIBS := -lopenblas
else ifeq ($(BLAS),openblas)
  SHIM := $(OBJ)/blas_shim.o
  SHIM_DEF := -DSPARKNET_BLAS_SCIPY
  BLAS_LIBS := -L$(OUT)/lib -lscipy_openblas
else ifeq ($(BLAS),mkl)
  SHIM := $(OBJ)/blas_shim.o
  SHIM_DEF := -DSPARKNET_BLAS_MKL
  BLAS_LIBS := -L$(BLAS_DIR) -l:libmkl_rt.so.3
  TOOL_RPATH := -Wl,-rpath,$(BLAS_DIR)
else
  $(error unknown BLAS=$(BLAS); use system, openblas or mkl)
endif
LIBS += $(BLAS_LIBS)

ifeq ($(CUDA),1)
  CUDA_HOME ?= $(patsubst %/bin/nvcc,%,$(realpath $(shell command -v $(NVCC))))
  INCS += -I$(CUDA_HOME)/include
  LIBS += -L$(CUDA_HOME)/lib64 -Wl,-rpath,$(CUDA_HOME)/lib64 -lcudart -lcublas -lcurand
  OBJS += $(patsubst $(SRC)/src/caffe/%.cu,$(OBJ)/%.cu.o,$(CU_SRCS))
  CUDA_ARCH ?= -gencode arch=compute_80,code=sm_80 -gencode arch=compute_90,code=sm_90
else
  DEFS += -DCPU_ONLY
endif

CXXFLAGS := -O3 -fPIC -std=c++14 -pthread -w $(DEFS) $(INCS) -include $(FATAL)

all: $(OUT)/lib/libcaffe.so

$(GEN)/caffe.pb.cc: $(SRC)/src/caffe/proto/caffe.proto
	@mkdir -p $(GEN)
	protoc --proto_path=$(SRC)/src/caffe/proto --cpp_out=$(GEN) $<
	cp $< $(GEN)/caffe.proto

$(OBJ)/proto/caffe.pb.o: $(GEN)/caffe.pb.cc
	@mkdir -p $(dir $@)
	$(CXX) $(CXXFLAGS) -c $< -o $@

$(OBJ)/%.o: $(SRC)/src/caffe/%.cpp $(GEN)/caffe.pb.cc
	@mkdir -p $(dir $@)
	@echo "  CXX $*.cpp"
	@$(CXX) $(CXXFLAGS) -c $< -o $@

$(OBJ)/%.cu.o: $(SRC)/src/caffe/%.cu $(GEN)/caffe.pb.cc
	@mkdir -p $(dir $@)
	@echo "  NVCC $*.cu"
	@$(NVCC) -O3 -std=c++14 $(CUDA_ARCH) -Xcompiler -fPIC,-w $(DEFS) $(INCS) \
	    -include $(FATAL) -c $< -o $@

$(OBJ)/blas_shim.o: $(BLAS_SHIM)
	@mkdir -p $(dir $@)
	$(CC) -O2 -fPIC $(SHIM_DEF) -c $< -o $@

$(OUT)/lib/libcaffe.so: $(OBJS) $(SHIM)
	@mkdir -p $(dir $@)
	$(CXX) -shared -o $@ $^ $(LIBS) -Wl,-soname,libcaffe.so -Wl,-rpath,'$$ORIGIN'

# Caffe's own command-line tool, for tests that check interoperability with
# files Caffe itself writes. Not installed for users.
$(OUT)/bin/caffe: $(SRC)/tools/caffe.cpp $(OUT)/lib/libcaffe.so
	@mkdir -p $(dir $@)
	$(CXX) $(CXXFLAGS) $< -o $@ -L$(OUT)/lib -Wl,-rpath,$(OUT)/lib $(TOOL_RPATH) -lcaffe $(LIBS)

tools: $(OUT)/bin/caffe

.PHONY: all tools
