/* The BLAS entry points Caffe and the ccaffe facade call, for BLAS libraries
 * that do not export them under the names Debian's OpenBLAS uses.
 *
 * Caffe's objects are compiled once against the standard <cblas.h>; which BLAS
 * they run on is decided only when libcaffe.so is linked (caffe.mk, BLAS=...),
 * with this file compiled in for:
 *
 *   SPARKNET_BLAS_SCIPY  the OpenBLAS of PyPI's scipy-openblas32, whose symbols
 *                        carry a "scipy_" prefix: cblas_* forward to scipy_cblas_*.
 *   SPARKNET_BLAS_MKL    Intel MKL, which exports cblas_* itself: only the
 *                        openblas_* thread calls the facade makes are mapped.
 *
 * Every function is a direct tail call; the cost is one jump per BLAS call.
 */
#include <stddef.h>

#if defined(SPARKNET_BLAS_SCIPY)

#define FWD(ret, name, params, args) \
  ret scipy_##name params;           \
  ret name params { return scipy_##name args; }

/* Enums of <cblas.h> are passed as int: the same calling convention. */
FWD(void, cblas_sgemm,
    (int o, int ta, int tb, int m, int n, int k, float alpha, const float *a, int lda,
     const float *b, int ldb, float beta, float *c, int ldc),
    (o, ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc))
FWD(void, cblas_dgemm,
    (int o, int ta, int tb, int m, int n, int k, double alpha, const double *a, int lda,
     const double *b, int ldb, double beta, double *c, int ldc),
    (o, ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc))
FWD(void, cblas_sgemv,
    (int o, int t, int m, int n, float alpha, const float *a, int lda, const float *x,
     int incx, float beta, float *y, int incy),
    (o, t, m, n, alpha, a, lda, x, incx, beta, y, incy))
FWD(void, cblas_dgemv,
    (int o, int t, int m, int n, double alpha, const double *a, int lda, const double *x,
     int incx, double beta, double *y, int incy),
    (o, t, m, n, alpha, a, lda, x, incx, beta, y, incy))
FWD(void, cblas_saxpy, (int n, float alpha, const float *x, int incx, float *y, int incy),
    (n, alpha, x, incx, y, incy))
FWD(void, cblas_daxpy, (int n, double alpha, const double *x, int incx, double *y, int incy),
    (n, alpha, x, incx, y, incy))
FWD(void, cblas_sscal, (int n, float alpha, float *x, int incx), (n, alpha, x, incx))
FWD(void, cblas_dscal, (int n, double alpha, double *x, int incx), (n, alpha, x, incx))
FWD(void, cblas_scopy, (int n, const float *x, int incx, float *y, int incy),
    (n, x, incx, y, incy))
FWD(void, cblas_dcopy, (int n, const double *x, int incx, double *y, int incy),
    (n, x, incx, y, incy))
FWD(float, cblas_sdot, (int n, const float *x, int incx, const float *y, int incy),
    (n, x, incx, y, incy))
FWD(double, cblas_ddot, (int n, const double *x, int incx, const double *y, int incy),
    (n, x, incx, y, incy))
FWD(float, cblas_sasum, (int n, const float *x, int incx), (n, x, incx))
FWD(double, cblas_dasum, (int n, const double *x, int incx), (n, x, incx))

FWD(void, openblas_set_num_threads, (int n), (n))
FWD(int, openblas_get_num_threads, (void), ())
FWD(char *, openblas_get_corename, (void), ())
FWD(char *, openblas_get_config, (void), ())

#elif defined(SPARKNET_BLAS_MKL)

void MKL_Set_Num_Threads(int n);
int MKL_Get_Max_Threads(void);

/* One thread means MKL's sequential path: the threading layer is chosen by
 * MKL_THREADING_LAYER (sparknet sets it before libcaffe is loaded). */
void openblas_set_num_threads(int n) { MKL_Set_Num_Threads(n); }
int openblas_get_num_threads(void) { return MKL_Get_Max_Threads(); }

#else
#error "define SPARKNET_BLAS_SCIPY or SPARKNET_BLAS_MKL"
#endif
