/*
** pmap.c: address -> value maps (pmap.h).
**
** Owns: nothing shared; a map belongs to its caller.  Locking: none (one
** thread uses a map at a time).
*/
#include "pmap.h"

#include <string.h>

#include "runtime.h"

static size_t slot(const weft_pmap *m, const void *p) {
  uint64_t x = (uint64_t)(uintptr_t)p;
  x ^= x >> 33;
  x *= 0xff51afd7ed558ccdULL;
  x ^= x >> 33;
  size_t i = (size_t)x & (m->cap - 1);
  while (m->keys[i] != NULL && m->keys[i] != p) i = (i + 1) & (m->cap - 1);
  return i;
}

const uint64_t *weft_pmap_get(const weft_pmap *m, const void *p) {
  if (m->cap == 0) return NULL;
  size_t i = slot(m, p);
  return m->keys[i] == p ? &m->vals[i] : NULL;
}

void weft_pmap_free(weft_runtime *rt, weft_pmap *m) {
  if (m->keys != m->ikeys) {
    weft_free(rt, m->keys, m->cap * sizeof *m->keys);
    weft_free(rt, m->vals, m->cap * sizeof *m->vals);
  }
  m->keys = NULL;
  m->vals = NULL;
  m->cap = m->n = 0;
}

bool weft_pmap_put(weft_runtime *rt, weft_pmap *m, const void *p, uint64_t v) {
  if (m->cap == 0) {  /* the inline slots first */
    m->keys = m->ikeys;
    m->vals = m->ivals;
    m->cap = WEFT_PMAP_INLINE;
    memset(m->ikeys, 0, sizeof m->ikeys);
  }
  if (2 * (m->n + 1) > m->cap) {
    const void **okeys = m->keys;
    uint64_t *ovals = m->vals;
    size_t ocap = m->cap, cap = 2 * ocap;
    const void **keys = weft_alloc(rt, cap * sizeof *keys);
    uint64_t *vals = weft_alloc(rt, cap * sizeof *vals);
    if (keys == NULL || vals == NULL) {
      weft_free(rt, keys, keys ? cap * sizeof *keys : 0);
      weft_free(rt, vals, vals ? cap * sizeof *vals : 0);
      return false;
    }
    memset(keys, 0, cap * sizeof *keys);
    m->keys = keys;
    m->vals = vals;
    m->cap = cap;
    for (size_t i = 0; i < ocap; i++)
      if (okeys[i] != NULL) {
        size_t j = slot(m, okeys[i]);
        m->keys[j] = okeys[i];
        m->vals[j] = ovals[i];
      }
    if (okeys != m->ikeys) {
      weft_free(rt, okeys, ocap * sizeof *okeys);
      weft_free(rt, ovals, ocap * sizeof *ovals);
    }
  }
  size_t i = slot(m, p);
  m->keys[i] = p;
  m->vals[i] = v;
  m->n++;
  return true;
}
