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


cdef _check(int64_t n, int64_t c, int64_t h, int64_t w, const int64_t[::1] ys,
            const int64_t[::1] xs, const uint8_t[::1] flips, float[:, :, :, ::1] out):
    if out.shape[0] != n or out.shape[1] != c or out.shape[2] > h or out.shape[3] > w \
            or ys.shape[0] < n or xs.shape[0] < n or flips.shape[0] < n:
        raise ValueError("crop_mirror_mean: inconsistent shapes")


cdef tuple _means(mean, mean_flipped, int64_t c, int64_t h, int64_t w):
    """The (mean, mirrored mean) pair as C-contiguous float32 (C, H, W); zeros for None."""
    if mean is None:
        mean = mean_flipped = np.zeros((c, h, w), np.float32)
    cdef const float[:, :, ::1] m = mean
    cdef const float[:, :, ::1] mf = mean_flipped
    if m.shape[0] != c or m.shape[1] != h or m.shape[2] != w or mf.shape[0] != c \
            or mf.shape[1] != h or mf.shape[2] != w:
        raise ValueError("crop_mirror_mean: the mean image does not match the input")
    return mean, mean_flipped


def crop_mirror_mean(const uint8_t[:, :, :, ::1] nhwc, const int64_t[::1] ys,
                     const int64_t[::1] xs, const uint8_t[::1] flips, mean, mean_flipped,
                     float[:, :, :, ::1] out):
    """Crop, mirror, float and subtract the mean of a uint8 NHWC batch into CHW ``out``.

    ``mean``/``mean_flipped``: float32 C-contiguous (C, H, W) arrays (the mean
    and its left-right mirror), or None for no mean.
    Offsets must already be valid (the caller checks them).
    """
    cdef int64_t n = nhwc.shape[0], h = nhwc.shape[1], w = nhwc.shape[2], c = nhwc.shape[3]
    _check(n, c, h, w, ys, xs, flips, out)
    mean, mean_flipped = _means(mean, mean_flipped, c, h, w)
    cdef const float[:, :, ::1] m = mean
    cdef const float[:, :, ::1] mf = mean_flipped
    if n == 0:
        return
    with nogil:
        crop_mirror_mean_u8(&nhwc[0, 0, 0, 0], n, h, w, c, &ys[0], &xs[0], &flips[0],
                            &m[0, 0, 0], &mf[0, 0, 0], out.shape[2], out.shape[3],
                            &out[0, 0, 0, 0])


def crop_mirror_mean_planar(const pixel_t[:, :, :, ::1] nchw, const int64_t[::1] ys,
                            const int64_t[::1] xs, const uint8_t[::1] flips, mean,
                            mean_flipped, float[:, :, :, ::1] out):
    """The same for a planar (N, C, H, W) uint8 or float32 batch (the trainer's cache layout).

    Arguments as :func:`crop_mirror_mean`; offsets must already be valid.
    """
    cdef int64_t n = nchw.shape[0], c = nchw.shape[1], h = nchw.shape[2], w = nchw.shape[3]
    _check(n, c, h, w, ys, xs, flips, out)
    mean, mean_flipped = _means(mean, mean_flipped, c, h, w)
    cdef const float[:, :, ::1] m = mean
    cdef const float[:, :, ::1] mf = mean_flipped
    if n == 0:
        return
    with nogil:
        if pixel_t is uint8_t:
            crop_mirror_mean_planar_u8(&nchw[0, 0, 0, 0], n, h, w, c, &ys[0], &xs[0],
                                       &flips[0], &m[0, 0, 0], &mf[0, 0, 0], out.shape[2],
                                       out.shape[3], &out[0, 0, 0, 0])
        else:
            crop_mirror_mean_planar_f32(&nchw[0, 0, 0, 0], n, h, w, c, &ys[0], &xs[0],
                                        &flips[0], &m[0, 0, 0], &mf[0, 0, 0], out.shape[2],
                                        out.shape[3], &out[0, 0, 0, 0])
