/* Dot products of float16 rows with a float32 query: the exact search's fast pass (see native.py).

   clipwidgets_dot16(matrix, rows, dim, query, out, level, next, chunk) sets out[r] = sum_i matrix[r * dim + i]
   * query[i], in float32 arithmetic on the exact float32 value of each float16 entry, for the runs of
   `chunk` rows it claims from the shared counter `next` (see claim.h) until all `rows` are claimed.
   `level` is 2 for AVX512F, 1 for AVX2 with FMA and F16C: the caller checks that the CPU has them. It
   returns the level it ran, or 0 when it cannot run (a CPU other than x86, or dim not a multiple of
   the vector width), leaving `out` untouched.

   Each row is read front to back with eight independent accumulators. On the 2-core AMD EPYC (AVX512)
   this read 10M x 512 memory-mapped rows in 1.1x the time of reading them once (torch.mv: 1.9x, its
   float16 path converts and reduces more slowly); reading two rows side by side or prefetching ahead
   was 2-3x slower, as the hardware prefetcher follows one stream per thread best. Threads are the
   caller's: each calls this with the same counter (ctypes releases the GIL during the call). */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stddef.h>
#include <stdint.h>

#include "claim.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>

#define HALF512(p) _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(p)))
#define HALF256(p) _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(p)))

__attribute__((target("avx512f")))
static void rows_avx512(const uint16_t *matrix, size_t rows, size_t dim, const float *query, float *out) {
    for (size_t r = 0; r < rows; r++) {
        const uint16_t *row = matrix + r * dim;
        __m512 sum[8];
        for (int j = 0; j < 8; j++)
            sum[j] = _mm512_setzero_ps();
        size_t i = 0;
        for (; i + 128 <= dim; i += 128)
            for (int j = 0; j < 8; j++)
                sum[j] = _mm512_fmadd_ps(HALF512(row + i + 16 * j), _mm512_loadu_ps(query + i + 16 * j), sum[j]);
        for (; i < dim; i += 16)
            sum[0] = _mm512_fmadd_ps(HALF512(row + i), _mm512_loadu_ps(query + i), sum[0]);
        for (int j = 1; j < 8; j++)
            sum[0] = _mm512_add_ps(sum[0], sum[j]);
        out[r] = _mm512_reduce_add_ps(sum[0]);
    }
}

__attribute__((target("avx2,fma,f16c")))
static void rows_avx2(const uint16_t *matrix, size_t rows, size_t dim, const float *query, float *out) {
    for (size_t r = 0; r < rows; r++) {
        const uint16_t *row = matrix + r * dim;
        __m256 sum[8];
        for (int j = 0; j < 8; j++)
            sum[j] = _mm256_setzero_ps();
        size_t i = 0;
        for (; i + 64 <= dim; i += 64)
            for (int j = 0; j < 8; j++)
                sum[j] = _mm256_fmadd_ps(HALF256(row + i + 8 * j), _mm256_loadu_ps(query + i + 8 * j), sum[j]);
        for (; i < dim; i += 8)
            sum[0] = _mm256_fmadd_ps(HALF256(row + i), _mm256_loadu_ps(query + i), sum[0]);
        for (int j = 1; j < 8; j++)
            sum[0] = _mm256_add_ps(sum[0], sum[j]);
        __m128 half = _mm_add_ps(_mm256_castps256_ps128(sum[0]), _mm256_extractf128_ps(sum[0], 1));
        half = _mm_add_ps(half, _mm_movehl_ps(half, half));
        half = _mm_add_ss(half, _mm_movehdup_ps(half));
        out[r] = _mm_cvtss_f32(half);
    }
}

/* float64 dot products of the float16 rows `rows` with a float64 query: the exact re-scoring of a
   top-k's candidates. Each product of a float16 with a float32 value is exact in float64. */
__attribute__((target("avx2,fma,f16c")))
static void exact_avx2(const uint16_t *matrix, size_t dim, const int64_t *rows, size_t count, const double *query,
                       double *out) {
    for (size_t k = 0; k < count; k++) {
        const uint16_t *row = matrix + (size_t)rows[k] * dim;
        __m256d sum[4];
        for (int j = 0; j < 4; j++)
            sum[j] = _mm256_setzero_pd();
        size_t i = 0;
        for (; i + 16 <= dim; i += 16)
            for (int j = 0; j < 2; j++) {
                __m256 wide = HALF256(row + i + 8 * j);
                sum[2 * j] = _mm256_fmadd_pd(_mm256_cvtps_pd(_mm256_castps256_ps128(wide)),
                                             _mm256_loadu_pd(query + i + 8 * j), sum[2 * j]);
                sum[2 * j + 1] = _mm256_fmadd_pd(_mm256_cvtps_pd(_mm256_extractf128_ps(wide, 1)),
                                                 _mm256_loadu_pd(query + i + 8 * j + 4), sum[2 * j + 1]);
            }
        __m256d all = _mm256_add_pd(_mm256_add_pd(sum[0], sum[1]), _mm256_add_pd(sum[2], sum[3]));
        __m128d half = _mm_add_pd(_mm256_castpd256_pd128(all), _mm256_extractf128_pd(all, 1));
        double total = _mm_cvtsd_f64(_mm_add_sd(half, _mm_unpackhi_pd(half, half)));
        for (; i < dim; i++)
            total += (double)_cvtsh_ss(row[i]) * query[i];
        out[k] = total;
    }
}
#endif

/* out[k] = float64 dot product of matrix row rows[k] with `query`, k < count, where the CPU has AVX2,
   FMA and F16C (level 1 or 2 of clipwidgets_dot16, which the caller checks): returns 1, else 0. */
int clipwidgets_exact16(const uint16_t *matrix, size_t dim, const int64_t *rows, size_t count, const double *query,
                        double *out, int level) {
#if defined(__x86_64__) || defined(__i386__)
    if (level >= 1) {
        exact_avx2(matrix, dim, rows, count, query, out);
        return 1;
    }
#endif
    (void)matrix, (void)dim, (void)rows, (void)count, (void)query, (void)out, (void)level;
    return 0;
}

int clipwidgets_dot16(const uint16_t *matrix, size_t rows, size_t dim, const float *query, float *out, int level,
                      size_t *next, size_t chunk) {
    size_t first, count;
#if defined(__x86_64__) || defined(__i386__)
    if (level >= 2 && dim % 16 == 0) {
        while ((count = claim(next, chunk, rows, &first)) > 0)
            rows_avx512(matrix + first * dim, count, dim, query, out + first);
        return 2;
    }
    if (level >= 1 && dim % 8 == 0) {
        while ((count = claim(next, chunk, rows, &first)) > 0)
            rows_avx2(matrix + first * dim, count, dim, query, out + first);
        return 1;
    }
#endif
    (void)matrix, (void)rows, (void)dim, (void)query, (void)out, (void)level, (void)next, (void)chunk;
    (void)first, (void)count;
    return 0;
}

/* An importable module, so that Python finds this library by its package path (native.py loads it
   with ctypes); it defines no Python functions. */
static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_dot16", "float16 dot products (ctypes)", -1, NULL};

PyMODINIT_FUNC PyInit__dot16(void) {
    return PyModule_Create(&module);
}
