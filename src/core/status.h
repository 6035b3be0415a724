/* status.h - error reporting shared by every module.
 *
 * Expected failures return an hstu_status and fill an hstu_error with a
 * message (hstu_fail). Broken invariants are bugs: HSTU_ASSERT prints
 * file:line and aborts, in every build type.
 */
#ifndef HSTU_CORE_STATUS_H
#define HSTU_CORE_STATUS_H

#include "hstu.h"

#include <stdio.h>
#include <stdlib.h>

#if defined(__GNUC__)
#define HSTU_PRINTF(f, a) __attribute__((format(printf, f, a)))
#else
#define HSTU_PRINTF(f, a)
#endif

/* Fills err (when not NULL) and returns status, so callers can write
 * `return hstu_fail(err, HSTU_ERR_ARG, "...", ...);`. */
hstu_status hstu_fail(hstu_error *err, hstu_status status, const char *fmt, ...) HSTU_PRINTF(3, 4);

/* Prepends "prefix: " to an error message already in err. */
void hstu_error_prefix(hstu_error *err, const char *fmt, ...) HSTU_PRINTF(2, 3);

#define HSTU_ASSERT(cond)                                                             \
    do {                                                                              \
        if (!(cond)) {                                                                \
            fprintf(stderr, "%s:%d: assertion failed: %s\n", __FILE__, __LINE__, #cond); \
            abort();                                                                  \
        }                                                                             \
    } while (0)

#endif
