/* status.c - error messages and status names. */
#include "core/status.h"

#include <stdarg.h>
#include <string.h>

const char *hstu_status_name(hstu_status s)
{
    switch (s) {
    case HSTU_OK: return "ok";
    case HSTU_ERR_ARG: return "bad argument";
    case HSTU_ERR_IO: return "i/o error";
    case HSTU_ERR_FORMAT: return "bad format";
    case HSTU_ERR_NOMEM: return "out of memory";
    case HSTU_ERR_UNSUPPORTED: return "unsupported";
    case HSTU_ERR_DEVICE: return "device error";
    }
    return "unknown status";
}

hstu_status hstu_fail(hstu_error *err, hstu_status status, const char *fmt, ...)
{
    if (err) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err->msg, sizeof err->msg, fmt, ap);
        va_end(ap);
        err->status = status;
    }
    return status;
}

void hstu_error_prefix(hstu_error *err, const char *fmt, ...)
{
    if (!err)
        return;
    char prefix[HSTU_MSG_MAX];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(prefix, sizeof prefix, fmt, ap);
    va_end(ap);
    char joined[2 * HSTU_MSG_MAX + 2];
    snprintf(joined, sizeof joined, "%s: %s", prefix, err->msg);
    memcpy(err->msg, joined, sizeof err->msg - 1); /* keeps the start if too long */
    err->msg[sizeof err->msg - 1] = 0;
}
