# cython: language_level=3, boundscheck=False, wraparound=False, embedsignature=True
"""Low-level binding of the ccaffe facade (see ccaffe/ccaffe.hpp).

This module is deliberately thin, in the manner of h5py's low-level layer: it
converts types, releases the GIL around Caffe's compute, never lets a C++
exception or an out-of-bounds copy through, and leaves policy (validation
messages, batching, weight collections) to :mod:`sparknet.engine.net`.
"""
from libc.string cimport memcpy
from libcpp cimport bool as cbool
from libcpp.string cimport string
from libcpp.vector cimport vector

import numpy as np

from sparknet._util import UserError

TRAIN = 0
TEST = 1


class CaffeError(UserError, RuntimeError):
    """Caffe rejected what it was given (a failed CHECK or LOG(FATAL) in Caffe).

    The message is Caffe's own, prefixed with the Caffe source file and line.
    """


cdef extern from "ccaffe.hpp" namespace "ccaffe":
    ctypedef enum NetId:
        kTrain
        kTest

    string current_exception_message()
    cbool current_exception_is_usage_error()
    void c_set_log_level "ccaffe::set_log_level"(int level)
    cbool c_cuda_build "ccaffe::cuda_build"()
    int c_gpu_count "ccaffe::gpu_count"()
    void c_set_blas_threads "ccaffe::set_blas_threads"(int threads) except +
    int c_blas_threads "ccaffe::blas_threads"()


cdef int _raise() except -1:
    # Called by Cython inside the C++ catch block, so the facade can rethrow.
    msg = current_exception_message().decode("utf-8", "replace")
    if current_exception_is_usage_error():
        raise ValueError(msg)
    raise CaffeError(msg)


cdef extern from "ccaffe.hpp" namespace "ccaffe":
    cdef cppclass BlobInfo:
        string name
        vector[int] shape

    cdef cppclass LayerInfo:
        string name
        string type
        vector[string] bottoms
        vector[string] tops
        string param

    cdef cppclass Engine:
        Engine(const string& solver_param, int gpu) except +_raise
        vector[BlobInfo] inputs(NetId net) except +_raise
        vector[BlobInfo] outputs(NetId net) except +_raise
        vector[string] blob_names(NetId net) except +_raise
        vector[BlobInfo] blob_shapes(NetId net) except +_raise
        vector[LayerInfo] layers(NetId net) except +_raise
        void reshape_inputs(NetId net, const vector[vector[int]]& shapes) except +_raise
        const float* blob_data(NetId net, const string& name, vector[int]* shape) except +_raise
        cbool step(const vector[const float*]& inputs, cbool check_finite, float* loss,
                   string* error) nogil
        cbool forward(NetId net, const vector[const float*]& inputs, string* error) nogil
        int iteration()
        void seed(unsigned int seed) except +_raise
        vector[BlobInfo] param_layers() except +_raise
        vector[vector[int]] param_shapes(int layer) except +_raise
        float* param_data(int layer, int blob) except +_raise
        int write_weights(int fd, cbool diff, string* error) nogil
        int write_solverstate(int fd, const string& learned_net, string* error) nogil
        void load_weights(const string& path) except +_raise
        void snapshot_hdf5(const string& prefix) except +_raise
        void restore(const string& solverstate) except +_raise
        void save_state(const string& path) except +_raise
        void load_state(const string& path) except +_raise



def set_log_level(int level):
    """Set Caffe's (glog's) minimum log level: 0 INFO, 1 WARNING, 2 ERROR."""
    c_set_log_level(level)


def cuda_build():
    """Whether this Caffe was compiled with CUDA."""
    return c_cuda_build()


def gpu_count():
    """The number of CUDA devices Caffe sees (0 in a CPU build)."""
    return c_gpu_count()


def set_blas_threads(int threads):
    """Set the number of OpenBLAS threads Caffe's CPU math uses."""
    if threads < 1:
        raise ValueError(f"BLAS threads must be >= 1, got {threads}")
    c_set_blas_threads(threads)


def blas_threads():
    """The number of OpenBLAS threads Caffe's CPU math uses."""
    return c_blas_threads()


cdef inline bytes _b(s):
    return s.encode("utf-8") if isinstance(s, str) else bytes(s)


cdef list _infos(vector[BlobInfo] infos):
    return [(i.name.decode("utf-8"), tuple(i.shape)) for i in infos]


cdef long _count(shape):
    cdef long n = 1
    for d in shape:
        n *= d
    return n


cdef class Engine_:
    """One Caffe solver and its TEST net (ccaffe::Engine)."""
    cdef Engine* c
    cdef list _counts   # per net: element count of each input blob
    cdef list _param_blobs  # (layer index, blob index, count) of each learnable blob
    cdef long _num_params

    def __cinit__(self, bytes solver_param, int gpu=-1):
        self.c = new Engine(solver_param, gpu)
        self._counts = [None, None]

    def __dealloc__(self):
        del self.c

    def inputs(self, int net):
        """[(name, shape)] of the net's Input-layer blobs."""
        return _infos(self.c.inputs(<NetId>net))

    def outputs(self, int net):
        """[(name, shape)] of the net's output blobs."""
        return _infos(self.c.outputs(<NetId>net))

    def blob_names(self, int net):
        return [n.decode("utf-8") for n in self.c.blob_names(<NetId>net)]

    def blob_shapes(self, int net):
        """[(name, shape)] of every blob of the net, in the net's order."""
        return _infos(self.c.blob_shapes(<NetId>net))

    def layers(self, int net):
        """[(name, type, bottoms, tops, serialized LayerParameter)] of the built net.

        Caffe's own Split layers included: the bottoms are the blobs each layer
        really reads.
        """
        return [(i.name.decode("utf-8"), i.type.decode("utf-8"),
                 tuple(b.decode("utf-8") for b in i.bottoms),
                 tuple(t.decode("utf-8") for t in i.tops), bytes(i.param))
                for i in self.c.layers(<NetId>net)]

    def reshape_inputs(self, int net, shapes):
        """New shapes for the input blobs (None keeps one), then reshape the net."""
        cdef vector[vector[int]] s = [[] if sh is None else [int(d) for d in sh]
                                      for sh in shapes]
        self._counts[net] = None
        self.c.reshape_inputs(<NetId>net, s)

    cdef vector[const float*] _pointers(self, int net, list arrays) except *:
        # Each array must be C-contiguous float32 with exactly the blob's count:
        # the facade memcpy's that many floats from it.
        cdef vector[const float*] ptrs
        cdef const float[::1] view
        counts = self._counts[net]
        if counts is None:
            counts = self._counts[net] = [_count(s) for _, s in _infos(self.c.inputs(<NetId>net))]
        if len(arrays) > len(counts):
            raise ValueError(f"{len(arrays)} input arrays for {len(counts)} input blobs")
        for i, a in enumerate(arrays):
            if a is None:
                ptrs.push_back(NULL)
                continue
            view = a.reshape(-1)
            if view.shape[0] != counts[i]:
                raise ValueError(f"input {i} has {view.shape[0]} values, the blob {counts[i]}")
            ptrs.push_back(&view[0] if view.shape[0] else NULL)
        return ptrs

    def step(self, list arrays, bint check_finite=True):
        """Copy arrays into the TRAIN inputs, run one solver step, return its loss.

        With ``check_finite`` (the default) a step whose forward pass gives a
        non-finite loss (or, on the CPU, an all-NaN max-pooling window) is not
        applied: no backward pass, no update, the iteration stays. The step was
        applied exactly when the returned loss is finite. ``check_finite=False``
        runs Caffe's own ``Solver::Step(1)``, unchecked: the reference the
        checked step is tested against, not for training.
        """
        cdef vector[const float*] ptrs = self._pointers(TRAIN, arrays)
        cdef float loss = 0
        cdef string err
        cdef cbool ok
        cdef cbool check = check_finite
        with nogil:
            ok = self.c.step(ptrs, check, &loss, &err)
        if not ok:
            raise CaffeError(err.decode("utf-8", "replace"))
        return loss

    def forward(self, int net, list arrays):
        """Copy arrays into the net's inputs and run a forward pass."""
        cdef vector[const float*] ptrs = self._pointers(net, arrays)
        cdef string err
        cdef cbool ok
        cdef NetId which = <NetId>net
        with nogil:
            ok = self.c.forward(which, ptrs, &err)
        if not ok:
            raise CaffeError(err.decode("utf-8", "replace"))

    def blob(self, int net, name):
        """A copy of a blob's data, as a float32 array of the blob's shape."""
        cdef vector[int] shape
        cdef const float* data = self.c.blob_data(<NetId>net, _b(name), &shape)
        out = np.empty(tuple(shape), dtype=np.float32)
        cdef float[::1] dst = out.reshape(-1)
        if dst.shape[0]:
            memcpy(&dst[0], data, sizeof(float) * dst.shape[0])
        return out

    @property
    def iteration(self):
        return self.c.iteration()

    def seed(self, unsigned int value):
        self.c.seed(value)

    def param_layout(self):
        """((layer name, (blob shape, ...)), ...) of the TRAIN net's learnable layers."""
        layout = []
        blobs = []
        for info in self.c.param_layers():
            index = info.shape[0]
            shapes = tuple(tuple(s) for s in self.c.param_shapes(index))
            blobs.extend((index, j, _count(s)) for j, s in enumerate(shapes))
            layout.append((info.name.decode("utf-8"), shapes))
        self._param_blobs = blobs
        self._num_params = sum(n for _, _, n in blobs)
        return tuple(layout)

    @property
    def num_params(self):
        """The number of values in all learnable blobs together."""
        if self._param_blobs is None:
            self.param_layout()
        return self._num_params

    def read_params(self, float[::1] flat):
        """Copy every learnable blob, in layout order, into one flat buffer."""
        self._copy_params(&flat[0] if flat.shape[0] else NULL, flat.shape[0], True)

    def write_params(self, const float[::1] flat):
        """Copy one flat buffer (read-only is fine), in layout order, into the learnable blobs."""
        self._copy_params(<float*>&flat[0] if flat.shape[0] else NULL, flat.shape[0], False)

    cdef _copy_params(self, float* flat, long total, bint read):
        # read: blobs -> flat; otherwise flat -> blobs (flat is then only read).
        cdef long offset = 0
        cdef long n
        cdef float* blob
        if self._param_blobs is None:
            self.param_layout()
        if total != self._num_params:  # checked first: a wrong buffer changes nothing
            raise ValueError(f"flat buffer has {total} values, the net {self._num_params}")
        for index, j, n in self._param_blobs:
            blob = self.c.param_data(index, j)
            if n:
                if read:
                    memcpy(flat + offset, blob, sizeof(float) * n)
                else:
                    memcpy(blob, flat + offset, sizeof(float) * n)
            offset += n

    def write_weights(self, int fd, bint diff=False):
        """Serialize the weights (a .caffemodel) into the open file descriptor ``fd``.

        Returns 0, or the errno of the write that failed; the caller names the
        file (the facade knows none). The GIL is released meanwhile.
        """
        cdef string err
        cdef int code
        cdef cbool with_diff = diff
        with nogil:
            code = self.c.write_weights(fd, with_diff, &err)
        if code < 0:
            raise CaffeError(err.decode("utf-8", "replace"))
        return code

    def write_solverstate(self, int fd, learned_net):
        """Caffe's SolverState naming ``learned_net`` into ``fd``; as :meth:`write_weights`."""
        cdef string err
        cdef string model = _b(learned_net)
        cdef int code
        with nogil:
            code = self.c.write_solverstate(fd, model, &err)
        if code < 0:
            raise CaffeError(err.decode("utf-8", "replace"))
        return code

    def load_weights(self, path):
        self.c.load_weights(_b(path))

    def snapshot_hdf5(self, prefix):
        self.c.snapshot_hdf5(_b(prefix))

    def restore(self, path):
        self.c.restore(_b(path))

    def save_state(self, path):
        self.c.save_state(_b(path))

    def load_state(self, path):
        self.c.load_state(_b(path))
