/* Dot products of int8 rows with an int16 query: the fast pass over small stores (see quantized.py).

   clipwidgets_dot8(matrix, rows, dim, query, row_scales, query_scale, out, next, chunk) sets
   out[r] = (sum_i matrix[r * dim + i] * query[i]) * row_scales[r] * query_scale for the runs of `chunk`
   rows it claims from the shared counter `next` (see claim.h) until all `rows` are claimed. The sum
   is exact in int32 (the caller keeps 127 * max|query| * dim below 2**31); the scaling is float32. It
   needs AVX2 (the caller checks the CPU has it) and returns 1, or 0 when it cannot run (a CPU other
   than x86, or dim not a multiple of 16), leaving `out` untouched.

   Each row: 16 int8 at a time widened to int16 (vpmovsxbw), multiplied with the query and summed in
   pairs into int32 (vpmaddwd), four accumulators. A byte per value is half the float16 kernel's
   reads: 10k x 512 rows in 94 us on one core of the 2-core AMD EPYC, against 196 us in float16. */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stddef.h>
#include <stdint.h>

#include "claim.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>

#define WIDE(p) _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(p)))
#define QUERY(p) _mm256_loadu_si256((const __m256i *)(p))

__attribute__((target("avx2")))
static void rows_avx2(const int8_t *matrix, size_t rows, size_t dim, const int16_t *query, const float *row_scales,
                      float query_scale, float *out) {
    for (size_t r = 0; r < rows; r++) {
        const int8_t *row = matrix + r * dim;
        /* four named sums: with an array of them gcc 12 copies each sum once more per step (11% slower) */
        __m256i sum0 = _mm256_setzero_si256(), sum1 = sum0, sum2 = sum0, sum3 = sum0;
        size_t i = 0;
        for (; i + 64 <= dim; i += 64) {
            sum0 = _mm256_add_epi32(sum0, _mm256_madd_epi16(WIDE(row + i), QUERY(query + i)));
            sum1 = _mm256_add_epi32(sum1, _mm256_madd_epi16(WIDE(row + i + 16), QUERY(query + i + 16)));
            sum2 = _mm256_add_epi32(sum2, _mm256_madd_epi16(WIDE(row + i + 32), QUERY(query + i + 32)));
            sum3 = _mm256_add_epi32(sum3, _mm256_madd_epi16(WIDE(row + i + 48), QUERY(query + i + 48)));
        }
        __m256i all = _mm256_add_epi32(_mm256_add_epi32(sum0, sum1), _mm256_add_epi32(sum2, sum3));
        for (; i < dim; i += 16)
            all = _mm256_add_epi32(all, _mm256_madd_epi16(WIDE(row + i), QUERY(query + i)));
        __m128i half = _mm_add_epi32(_mm256_castsi256_si128(all), _mm256_extracti128_si256(all, 1));
        half = _mm_add_epi32(half, _mm_shuffle_epi32(half, 0x4e));
        half = _mm_add_epi32(half, _mm_shuffle_epi32(half, 0xb1));
        out[r] = (float)_mm_cvtsi128_si32(half) * row_scales[r] * query_scale;
    }
}
#endif

#if defined(__x86_64__) || defined(__i386__)
#define WITH_AVX2 __attribute__((target("avx2")))  /* only called where the int8 kernel runs */
#else
#define WITH_AVX2
#endif

/* The largest |x[r, i]| of float32 rows, per dimension, into ranges[i] (which holds those seen so far). */
WITH_AVX2 void clipwidgets_ranges(const float *matrix, size_t rows, size_t dim, float *ranges) {
    for (size_t r = 0; r < rows; r++)
        for (size_t i = 0; i < dim; i++) {
            float value = fabsf(matrix[r * dim + i]);
            if (value > ranges[i])
                ranges[i] = value;
        }
}

/* Quantizes float32 rows (see quantized.py): values[r, i] = round(x[r, i] / (s[r] * d[i])) with
   s[r] = max_i |x[r, i] / d[i]| / 127 (1/127 for a zero row), as float32; bounds[0] becomes the largest
   squared norm of a residual x[r] - s[r] * d * values[r] seen so far and bounds[1] the largest
   s[r] * |values[r]|, both in float64. */
WITH_AVX2 void clipwidgets_quantize8(const float *matrix, size_t rows, size_t dim, const float *dim_scales,
                                     int8_t *values, float *row_scales, double *bounds) {
    double inverse_dims[dim];  /* multiplying by inverses: any rounding of v is fine, e is exact */
    for (size_t i = 0; i < dim; i++)
        inverse_dims[i] = 1.0 / dim_scales[i];
    for (size_t r = 0; r < rows; r++) {
        const float *row = matrix + r * dim;
        double largest = 0;
        for (size_t i = 0; i < dim; i++) {
            double relative = fabs(row[i] * inverse_dims[i]);
            largest = relative > largest ? relative : largest;
        }
        float scale = (float)((largest > 0 ? largest : 127.0) / 127.0);
        double inverse = 1.0 / scale, residual[4] = {0, 0, 0, 0}, length[4] = {0, 0, 0, 0};
        for (size_t i = 0; i < dim; i++) {  /* four sums of each: no chain of dependent additions */
            double value = rint(row[i] * inverse_dims[i] * inverse);
            value = value > 127 ? 127 : value < -127 ? -127 : value;
            values[r * dim + i] = (int8_t)value;
            double error = (double)row[i] - (double)scale * dim_scales[i] * value;
            residual[i % 4] += error * error;
            length[i % 4] += value * value;
        }
        double residual_sum = (residual[0] + residual[1]) + (residual[2] + residual[3]);
        double length_sum = (length[0] + length[1]) + (length[2] + length[3]);
        row_scales[r] = scale;
        if (residual_sum > bounds[0])
            bounds[0] = residual_sum;
        if (scale * sqrt(length_sum) > bounds[1])
            bounds[1] = scale * sqrt(length_sum);
    }
}

/* Rounds a query's values q[i] * d[i] to int16 w[i] = round(q[i] * d[i] / t) within +-limit, with step
   t = max_i |q[i] * d[i]| / limit as float32: sets out (w), result[0] = t, result[1] = |q * d - t * w|
   (the norm of the query's rounding f) and result[2] = |q|, in float64. */
WITH_AVX2 void clipwidgets_query8(const float *query, const float *dim_scales, size_t dim, size_t limit, int16_t *out,
                                  double *result) {
    double largest = 0;
    for (size_t i = 0; i < dim; i++) {
        double scaled = fabs((double)query[i] * dim_scales[i]);
        largest = scaled > largest ? scaled : largest;
    }
    float step = (float)(largest / (double)limit);
    if (!(step > 0))
        step = 1;
    double inverse = 1.0 / step, residual = 0, length = 0, bound = (double)limit;
    for (size_t i = 0; i < dim; i++) {
        length += (double)query[i] * query[i];
        double scaled = (double)query[i] * dim_scales[i];
        double value = rint(scaled * inverse);
        value = value > bound ? bound : value < -bound ? -bound : value;
        out[i] = (int16_t)value;
        double error = scaled - (double)step * value;
        residual += error * error;
    }
    result[0] = step;
    result[1] = sqrt(residual);
    result[2] = sqrt(length);
}

int clipwidgets_dot8(const int8_t *matrix, size_t rows, size_t dim, const int16_t *query, const float *row_scales,
                     float query_scale, float *out, size_t *next, size_t chunk) {
    size_t first, count;
#if defined(__x86_64__) || defined(__i386__)
    if (dim % 16 == 0) {
        while ((count = claim(next, chunk, rows, &first)) > 0)
            rows_avx2(matrix + first * dim, count, dim, query, row_scales + first, query_scale, out + first);
        return 1;
    }
#endif
    (void)matrix, (void)rows, (void)dim, (void)query, (void)row_scales, (void)query_scale, (void)out;
    (void)next, (void)chunk, (void)first, (void)count;
    return 0;
}

/* An importable module, so that Python finds this library by its package path (native.py loads it
   with ctypes); it defines no Python functions. */
static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_dot8", "int8 dot products (ctypes)", -1, NULL};

PyMODINIT_FUNC PyInit__dot8(void) {
    return PyModule_Create(&module);
}
