/* Rows shared out between threads: each thread of a kernel call claims runs of `chunk` rows from one
   counter until none are left. A thread that starts late (a pool thread takes 17-35 us to wake on the
   2-core AMD EPYC, a third of a 10k-row scan) finds less left to do instead of finishing last. */

#ifndef CLIPWIDGETS_CLAIM_H
#define CLIPWIDGETS_CLAIM_H

#include <stddef.h>

/* Claims the next run: sets *first and returns its length (0 when all `rows` are claimed). */
static inline size_t claim(size_t *next, size_t chunk, size_t rows, size_t *first) {
    *first = __atomic_fetch_add(next, chunk, __ATOMIC_RELAXED);
    if (*first >= rows)
        return 0;
    return rows - *first < chunk ? rows - *first : chunk;
}

#endif
