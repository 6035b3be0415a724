/* json_arena.h - jansson's memory from a bounded arena that is reused.
 *
 * jansson takes one process-wide pair of allocation functions
 * (json_set_alloc_funcs). json_arena_install sets a pair that serves the
 * arena bound to the calling thread, and malloc/free on any thread with no
 * arena bound (the server's metadata, statistics and repository endpoints,
 * a test's own jansson use): a request's JSON is parsed with no malloc, the
 * rest of the process is unchanged.
 *
 * An arena is a bump allocator over memory the caller owns (a job slot's
 * scratch, docs/serving.md "Memory"): bind resets it, frees inside it do
 * nothing, and an allocation that does not fit returns NULL (jansson then
 * fails the parse) and sets `overflow`, which the decoder turns into a 413.
 * Rules: only the thread that bound an arena uses the trees parsed in it,
 * and it drops them (or simply forgets them) before unbinding: after
 * unbind, a free of arena memory would reach free(3).
 */
#ifndef HSTU_SERVE_JSON_ARENA_H
#define HSTU_SERVE_JSON_ARENA_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct json_arena {
    unsigned char *base;  /* caller's memory, cap bytes, 16-byte aligned */
    size_t cap;
    size_t used;          /* since the last bind */
    size_t high;          /* most used by one parse, over the arena's life */
    bool overflow;        /* an allocation did not fit since the last bind */
} json_arena;

/* Bytes one JSON value of a request may cost in the arena: jansson's value
 * (24 bytes, 32 aligned) and its slot in the array table that holds it (8,
 * twice over while the table doubles), rounded up. Sizing rule of
 * docs/serving.md: values x JSON_ARENA_VALUE_BYTES + JSON_ARENA_FIXED. */
#define JSON_ARENA_VALUE_BYTES 64
#define JSON_ARENA_FIXED ((size_t)64 << 10)

/* Sets jansson's allocation functions, once per process (thread-safe).
 * Call before any thread binds an arena. */
void json_arena_install(void);
void json_arena_init(json_arena *a, void *mem, size_t cap);
/* Resets a and binds it to the calling thread. */
void json_arena_bind(json_arena *a);
/* The calling thread allocates from malloc again; records the high mark. */
void json_arena_unbind(json_arena *a);
/* Process-wide: parses that overflowed an arena (each a 413). */
uint64_t json_arena_overflows(void);

#endif
