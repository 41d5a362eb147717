/* The n largest of an array of float32 scores: the exact search's candidate selection (see native.py).

   clipwidgets_top(scores, count, n, values, positions) writes the n largest of scores[0:count]
   (0 < n <= count) to values[0:n], largest first, and their positions to positions[0:n]; of equal
   scores the lower position ranks first. Scores must not be NaN (-inf is fine: filtered rows).

   One pass keeps the n best seen so far in a min-heap built in the output arrays (its root is the
   worst kept); a score enters only when it beats the root, which after the first few hundred of 10k
   random-order scores is rare, so the pass costs about one comparison per score (10k scores: ~5 us,
   torch.topk of 42 of them: 20 us here). The heap is then sorted in place. Plain C: no CPU features. */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stddef.h>
#include <stdint.h>

/* a ranks below b: a lower score, or an equal one at a later position */
static int worse(float av, int64_t ap, float bv, int64_t bp) {
    return av < bv || (av == bv && ap > bp);
}

/* Restores the heap below `at` (size `size`) after its entry was replaced. */
static void sift_down(float *values, int64_t *positions, size_t size, size_t at) {
    float value = values[at];
    int64_t position = positions[at];
    for (;;) {
        size_t child = 2 * at + 1;
        if (child >= size)
            break;
        if (child + 1 < size && worse(values[child + 1], positions[child + 1], values[child], positions[child]))
            child++;
        if (!worse(values[child], positions[child], value, position))
            break;
        values[at] = values[child];
        positions[at] = positions[child];
        at = child;
    }
    values[at] = value;
    positions[at] = position;
}

void clipwidgets_top(const float *scores, size_t count, size_t n, float *values, int64_t *positions) {
    if (n == 0 || n > count)
        return;
    for (size_t i = 0; i < n; i++) {
        values[i] = scores[i];
        positions[i] = (int64_t)i;
    }
    for (size_t at = n / 2; at-- > 0;)
        sift_down(values, positions, n, at);
    for (size_t i = n; i < count; i++) {
        if (scores[i] > values[0]) {  /* an equal score comes later, so it ranks below the root */
            values[0] = scores[i];
            positions[0] = (int64_t)i;
            sift_down(values, positions, n, 0);
        }
    }
    for (size_t size = n; size > 1; size--) {  /* heapsort: the worst goes to the end each time */
        float value = values[0];
        int64_t position = positions[0];
        values[0] = values[size - 1];
        positions[0] = positions[size - 1];
        values[size - 1] = value;
        positions[size - 1] = position;
        sift_down(values, positions, size - 1, 0);
    }
}

/* An importable module, so that Python finds this library by its package path (native.py loads it
   with ctypes); it defines no Python functions. */
static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_top", "top-n of float32 scores (ctypes)", -1, NULL};

PyMODINIT_FUNC PyInit__top(void) {
    return PyModule_Create(&module);
}
