# cython: language_level=3, boundscheck=False, wraparound=False
"""Compiled kernels for the data pipeline (see _crop_kernel.h)."""
from libc.stdint cimport int64_t, uint8_t

import numpy as np

cdef extern from "_crop_kernel.h":
    void crop_mirror_mean_u8(const uint8_t* src, int64_t n, int64_t h, int64_t w, int64_t c,
                             const int64_t* ys, const int64_t* xs, const uint8_t* flips,
                             const float* mean, const float* mean_flipped,
                             int64_t ch, int64_t cw, float* out) nogil


def crop_mirror_mean(const uint8_t[:, :, :, ::1] nhwc, const int64_t[::1] ys,
                     const int64_t[::1] xs, const uint8_t[::1] flips, mean, mean_flipped,
                     float[:, :, :, ::1] out):
    """Crop, mirror, float and subtract the mean of a uint8 NHWC batch into CHW ``out``.

    ``mean``/``mean_flipped``: float32 C-contiguous (C, H, W) arrays (the mean
    and its left-right mirror), or None for no mean.
    Offsets must already be valid (the caller checks them).
    """
    cdef int64_t n = nhwc.shape[0], h = nhwc.shape[1], w = nhwc.shape[2], c = nhwc.shape[3]
    cdef int64_t ch = out.shape[2], cw = out.shape[3]
    cdef const float[:, :, ::1] m
    cdef const float[:, :, ::1] mf
    cdef const float* mp
    cdef const float* mfp
    if out.shape[0] != n or out.shape[1] != c or ys.shape[0] < n or xs.shape[0] < n \
            or flips.shape[0] < n:
        raise ValueError("crop_mirror_mean: inconsistent shapes")
    if mean is None:
        mean = mean_flipped = np.zeros((c, h, w), np.float32)
    m = mean
    mf = mean_flipped
    if m.shape[0] != c or m.shape[1] != h or m.shape[2] != w or mf.shape[0] != c \
            or mf.shape[1] != h or mf.shape[2] != w:
        raise ValueError("crop_mirror_mean: the mean image does not match the input")
    mp = &m[0, 0, 0]
    mfp = &mf[0, 0, 0]
    if n == 0:
        return
    with nogil:
        crop_mirror_mean_u8(&nhwc[0, 0, 0, 0], n, h, w, c, &ys[0], &xs[0], &flips[0],
                            mp, mfp, ch, cw, &out[0, 0, 0, 0])
