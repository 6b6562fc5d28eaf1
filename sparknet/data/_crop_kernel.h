/* The training-time image transform in one pass over memory.
 *
 * For each image of a uint8 NHWC batch: take the crop window (y0, x0) of
 * ch x cw pixels, mirror it left-right if asked, convert to float, subtract
 * the mean image's window (C, H, W; NULL for none) and write planar CHW.
 * This is what sparknet.data.Transformer does with numpy in several passes;
 * here each output float is written once. Planar (NCHW) input, as the Spark
 * trainer caches it, has its own kernels below. Three channels, the common case,
 * get a loop the compiler vectorises (one build per instruction set, picked
 * at load time by GCC's target_clones).
 */
#ifndef SPARKNET_CROP_KERNEL_H_
#define SPARKNET_CROP_KERNEL_H_

#include <stdint.h>

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define SPARKNET_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define SPARKNET_CLONES
#endif

/* One output row of a three-channel image: out_k[x] = row[3x + k] - mean_k[x]. */
static inline void row3(const uint8_t* __restrict row, const float* __restrict m0,
                        const float* __restrict m1, const float* __restrict m2,
                        float* __restrict o0, float* __restrict o1, float* __restrict o2,
                        int64_t cw) {
  for (int64_t x = 0; x < cw; ++x) {
    o0[x] = (float)row[3 * x + 0] - m0[x];
    o1[x] = (float)row[3 * x + 1] - m1[x];
    o2[x] = (float)row[3 * x + 2] - m2[x];
  }
}

/* The same, reading the row right to left (a mirrored image). */
static inline void row3_flipped(const uint8_t* __restrict row, const float* __restrict m0,
                                const float* __restrict m1, const float* __restrict m2,
                                float* __restrict o0, float* __restrict o1,
                                float* __restrict o2, int64_t cw) {
  const uint8_t* end = row + 3 * (cw - 1);
  for (int64_t x = 0; x < cw; ++x) {
    o0[x] = (float)end[-3 * x + 0] - m0[x];
    o1[x] = (float)end[-3 * x + 1] - m1[x];
    o2[x] = (float)end[-3 * x + 2] - m2[x];
  }
}

/* mean and mean_flipped: (C, H, W) float images (zeros for no mean);
 * mean_flipped is mean mirrored left-right, so a mirrored image reads its
 * mean forwards through memory too. */
SPARKNET_CLONES
static void crop_mirror_mean_u8(const uint8_t* src, int64_t n, int64_t h, int64_t w, int64_t c,
                                const int64_t* ys, const int64_t* xs, const uint8_t* flips,
                                const float* mean, const float* mean_flipped,
                                int64_t ch, int64_t cw, float* out) {
  const int64_t plane = ch * cw;
  for (int64_t i = 0; i < n; ++i) {
    const int64_t y0 = ys[i], x0 = xs[i];
    const int flip = flips[i];
    const float* m = flip ? mean_flipped : mean;
    const int64_t mx0 = flip ? w - x0 - cw : x0;
    for (int64_t y = 0; y < ch; ++y) {
      const uint8_t* row = src + ((i * h + y0 + y) * w + x0) * c;
      float* o = out + (i * c * ch + y) * cw;
      const float* my = m + (y0 + y) * w + mx0;
      if (c == 3) {
        if (flip)
          row3_flipped(row, my, my + h * w, my + 2 * h * w, o, o + plane, o + 2 * plane, cw);
        else
          row3(row, my, my + h * w, my + 2 * h * w, o, o + plane, o + 2 * plane, cw);
        continue;
      }
      for (int64_t k = 0; k < c; ++k) {
        const float* mk = my + k * h * w;
        float* ok = o + k * plane;
        for (int64_t x = 0; x < cw; ++x) {
          const int64_t s = flip ? cw - 1 - x : x;
          ok[x] = (float)row[c * s + k] - mk[x];
        }
      }
    }
  }
}

/* The same transform for planar (N, C, H, W) input, the layout the Spark
 * trainer caches examples in: each output row is one run of the source row,
 * read forwards or backwards, converted to float with the mean's window
 * subtracted (one rounding, as numpy's copy-then-subtract gives). TYPE is
 * the pixel type (uint8_t or float). */
#define SPARKNET_PLANAR_KERNEL(NAME, TYPE)                                                 \
  SPARKNET_CLONES                                                                          \
  static void NAME(const TYPE* src, int64_t n, int64_t h, int64_t w, int64_t c,           \
                   const int64_t* ys, const int64_t* xs, const uint8_t* flips,            \
                   const float* mean, const float* mean_flipped, int64_t ch, int64_t cw,  \
                   float* out) {                                                          \
    for (int64_t i = 0; i < n; ++i) {                                                     \
      const int64_t y0 = ys[i], x0 = xs[i];                                               \
      const int flip = flips[i];                                                          \
      const float* m = flip ? mean_flipped : mean;                                        \
      const int64_t mx0 = flip ? w - x0 - cw : x0;                                        \
      for (int64_t k = 0; k < c; ++k) {                                                   \
        for (int64_t y = 0; y < ch; ++y) {                                                \
          const TYPE* __restrict row = src + ((i * c + k) * h + y0 + y) * w + x0;         \
          const float* __restrict my = m + (k * h + y0 + y) * w + mx0;                    \
          float* __restrict o = out + ((i * c + k) * ch + y) * cw;                        \
          if (flip) {                                                                     \
            const TYPE* __restrict end = row + cw - 1;                                    \
            for (int64_t x = 0; x < cw; ++x) o[x] = (float)end[-x] - my[x];               \
          } else {                                                                        \
            for (int64_t x = 0; x < cw; ++x) o[x] = (float)row[x] - my[x];                \
          }                                                                               \
        }                                                                                 \
      }                                                                                   \
    }                                                                                     \
  }

SPARKNET_PLANAR_KERNEL(crop_mirror_mean_planar_u8, uint8_t)
SPARKNET_PLANAR_KERNEL(crop_mirror_mean_planar_f32, float)

#endif  /* SPARKNET_CROP_KERNEL_H_ */
