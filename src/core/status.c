/* status.c - printable names for ts_status codes (error messages everywhere in Tessera print
 * these, so they are the enumerator names themselves: easy to grep for in the headers), and the
 * formatter of the (err, err_size) one-line messages. */
#include <stdarg.h>
#include <stdio.h>

#include "tessera/core.h"

void ts_error_printf(char *err, size_t err_size, const char *fmt, ...) {
    if (!err || err_size == 0) return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, err_size, fmt, ap);
    va_end(ap);
}

const char *ts_status_name(ts_status s) {
    switch (s) {
    case TS_OK: return "TS_OK";
    case TS_ERR_INVALID_ARG: return "TS_ERR_INVALID_ARG";
    case TS_ERR_SHAPE: return "TS_ERR_SHAPE";
    case TS_ERR_DTYPE: return "TS_ERR_DTYPE";
    case TS_ERR_OOM: return "TS_ERR_OOM";
    case TS_ERR_IO: return "TS_ERR_IO";
    case TS_ERR_FORMAT: return "TS_ERR_FORMAT";
    case TS_ERR_UNSUPPORTED: return "TS_ERR_UNSUPPORTED";
    case TS_ERR_STATE: return "TS_ERR_STATE";
    case TS_ERR_RANGE: return "TS_ERR_RANGE";
    case TS_ERR_INTERNAL: return "TS_ERR_INTERNAL";
    }
    /* Not a switch default, so -Wswitch flags a new enumerator that lacks a name here. */
    return "TS_ERR_(unknown status)";
}
