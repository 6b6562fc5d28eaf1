# cython: language_level=3, boundscheck=False, wraparound=False
"""Compiled kernels for the data pipeline (see _crop_kernel.h)."""
from libc.stdint cimport int64_t, uint8_t

import numpy as np

cdef extern from "_crop_kernel.h":
    void crop_mirror_mean_u8(const uint8_t* src, int64_t n, int64_t h, int64_t w, int64_t c,
                             const int64_t* ys, const int64_t* xs, const uint8_t* flips,
                             const float* mean, const float* mean_flipped,
                             int64_t ch, int64_t cw, float* out) nogil
    void crop_mirror_mean_planar_u8(const uint8_t* src, int64_t n, int64_t h, int64_t w,
                                    int64_t c, const int64_t* ys, const int64_t* xs,
                                    const uint8_t* flips, const float* mean,
                                    const float* mean_flipped, int64_t ch, int64_t cw,
                                    float* out) nogil
    void crop_mirror_mean_planar_f32(const float* src, int64_t n, int64_t h, int64_t w,
                                     int64_t c, const int64_t* ys, const int64_t* xs,
                                     const uint8_t* flips, const float* mean,
                                     const float* mean_flipped, int64_t ch, int64_t cw,
                                     float* out) nogil

ctypedef fused pixel_t:
    uint8_t
    float


def crop_mirror_mean(const pixel_t[:, :, :, ::1] batch, const int64_t[::1] ys,
                     const int64_t[::1] xs, const uint8_t[::1] flips, mean, mean_flipped,
                     float[:, :, :, ::1] out, bint planar=False):
    """Crop, mirror, float and subtract the mean of a batch into float32 NCHW ``out``.

    ``batch``: uint8 NHWC (decoded images), or with ``planar`` uint8 or float32
    NCHW (the trainer's cache layout). ``mean``/``mean_flipped``: float32
    C-contiguous (C, H, W) arrays (the mean and its left-right mirror), or None
    for no mean. Offsets must already be valid (the caller checks them).
    """
    cdef int64_t n = batch.shape[0], c, h, w
    if planar:
        c, h, w = batch.shape[1], batch.shape[2], batch.shape[3]
    elif pixel_t is uint8_t:
        h, w, c = batch.shape[1], batch.shape[2], batch.shape[3]
    else:
        raise ValueError("crop_mirror_mean: channels-last input must be uint8")
    if out.shape[0] != n or out.shape[1] != c or out.shape[2] > h or out.shape[3] > w \
            or ys.shape[0] < n or xs.shape[0] < n or flips.shape[0] < n:
        raise ValueError("crop_mirror_mean: inconsistent shapes")
    if mean is None:
        mean = mean_flipped = np.zeros((c, h, w), np.float32)
    cdef const float[:, :, ::1] m = mean
    cdef const float[:, :, ::1] mf = mean_flipped
    if m.shape[0] != c or m.shape[1] != h or m.shape[2] != w or mf.shape[0] != c \
            or mf.shape[1] != h or mf.shape[2] != w:
        raise ValueError("crop_mirror_mean: the mean image does not match the input")
    if n == 0:
        return
    cdef int64_t ch = out.shape[2], cw = out.shape[3]
    with nogil:
        if pixel_t is float:
            crop_mirror_mean_planar_f32(&batch[0, 0, 0, 0], n, h, w, c, &ys[0], &xs[0],
                                        &flips[0], &m[0, 0, 0], &mf[0, 0, 0], ch, cw,
                                        &out[0, 0, 0, 0])
        elif planar:
            crop_mirror_mean_planar_u8(&batch[0, 0, 0, 0], n, h, w, c, &ys[0], &xs[0],
                                       &flips[0], &m[0, 0, 0], &mf[0, 0, 0], ch, cw,
                                       &out[0, 0, 0, 0])
        else:
            crop_mirror_mean_u8(&batch[0, 0, 0, 0], n, h, w, c, &ys[0], &xs[0], &flips[0],
                                &m[0, 0, 0], &mf[0, 0, 0], ch, cw, &out[0, 0, 0, 0])
