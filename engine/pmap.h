/*
** pmap.h: a map from addresses to 64-bit values, for one thread's use
** (the copier's "seen" objects, the cycle collector's nodes).  Open
** addressing; the first WEFT_PMAP_INLINE slots live in the map itself, so a
** small map allocates nothing, and a map must not be moved once used.
** A zeroed map is empty.
*/
#ifndef WEFT_PMAP_H
#define WEFT_PMAP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct weft_runtime;

#define WEFT_PMAP_INLINE 16

typedef struct weft_pmap {
  const void **keys;  /* ikeys/ivals, or arrays of the runtime's */
  uint64_t *vals;
  size_t cap, n;      /* cap is 0 or a power of 2 */
  const void *ikeys[WEFT_PMAP_INLINE];
  uint64_t ivals[WEFT_PMAP_INLINE];
} weft_pmap;

/* p's value, or NULL. */
const uint64_t *weft_pmap_get(const weft_pmap *m, const void *p);
/* Adds p (not present) -> v; false when out of memory (m unchanged). */
bool weft_pmap_put(struct weft_runtime *rt, weft_pmap *m, const void *p,
                   uint64_t v);
/* Frees what m allocated; m is then empty. */
void weft_pmap_free(struct weft_runtime *rt, weft_pmap *m);

#endif
