/* json_arena.c - jansson's memory from a per-thread bounded arena.
 *
 * The two functions given to json_set_alloc_funcs look at a thread-local
 * pointer: with an arena bound they bump-allocate from it (16-byte
 * alignment, as malloc gives) and ignore frees inside it; with none bound
 * they are malloc and free. A free of a pointer outside the bound arena
 * (a tree made before the bind) still goes to free(3).
 */
#include "serve/json_arena.h"

#include <jansson.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>

#define ALIGN 16

static _Thread_local json_arena *bound;
static pthread_once_t installed = PTHREAD_ONCE_INIT;
static atomic_uint_fast64_t overflows;

static void *arena_malloc(size_t n)
{
    json_arena *a = bound;
    if (!a)
        return malloc(n);
    size_t need = n ? (n + ALIGN - 1) & ~(size_t)(ALIGN - 1) : ALIGN;
    if (need < n || need > a->cap - a->used) {
        if (!a->overflow)
            atomic_fetch_add(&overflows, 1);
        a->overflow = true;
        return NULL;
    }
    void *p = a->base + a->used;
    a->used += need;
    return p;
}

static void arena_free(void *p)
{
    json_arena *a = bound;
    if (a && (unsigned char *)p >= a->base && (unsigned char *)p < a->base + a->cap)
        return; /* reclaimed as a whole at the next bind */
    free(p);
}

static void install_once(void) { json_set_alloc_funcs(arena_malloc, arena_free); }

void json_arena_install(void) { pthread_once(&installed, install_once); }

void json_arena_init(json_arena *a, void *mem, size_t cap)
{
    a->base = mem;
    a->cap = cap & ~(size_t)(ALIGN - 1);
    a->used = a->high = 0;
    a->overflow = false;
}

void json_arena_bind(json_arena *a)
{
    a->used = 0;
    a->overflow = false;
    bound = a;
}

void json_arena_unbind(json_arena *a)
{
    if (a->used > a->high)
        a->high = a->used;
    bound = NULL;
}

uint64_t json_arena_overflows(void) { return (uint64_t)atomic_load(&overflows); }
