/* textfile.h - reading raw text inputs line by line, with file:line errors.
 *
 * A source file is mapped read-only and walked line by line (LF or CRLF; a
 * last line without a newline counts; a leading UTF-8 byte order mark is skipped). Lines split into fields on a
 * one-character separator (',', '\t'), on "::" (MovieLens 1M), or on runs of
 * blanks (SASRec text); a CSV field may be double-quoted ("" inside quotes is
 * a quote). Numbers are parsed strictly: the whole field, no overflow.
 *
 * Malformed rows go through text_bad_row: by default the first one is the
 * error ("u.data:17: field 2 \"x\" is not an integer"); with skip_bad they
 * are counted, the first TEXT_BAD_SHOWN are printed to stderr, and reading
 * goes on. Nothing is ever dropped without being counted and reported.
 */
#ifndef HSTU_DATA_TEXTFILE_H
#define HSTU_DATA_TEXTFILE_H

#include "hstu.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct text_file {
    const char *path;
    const char *buf;      /* whole file (mapped) */
    size_t size;
    size_t pos;           /* offset of the next line */
    int64_t line;         /* number of the line last returned (1-based) */
    void *map;
} text_file;

/* Maps path. HSTU_ERR_IO when it cannot be opened or is not a regular file.
 * An empty file is valid (no lines). */
hstu_status text_open(const char *path, text_file *f, hstu_error *err);
void text_close(text_file *f);
/* Next line without its terminator; false at the end. */
bool text_next_line(text_file *f, const char **line, size_t *len);

typedef struct text_field {
    const char *s;
    size_t len;
} text_field;

#define TEXT_SEP_BLANKS 0   /* runs of spaces / tabs */
#define TEXT_SEP_DCOLON 1   /* "::" */
/* Splits a line into at most max fields (any other value of sep: that
 * character; ',' also honours double quotes). Returns the number of fields
 * found, or max + 1 when there are more than max. A quoted field is returned
 * without its quotes ("" stays doubled: no field we parse contains one). */
int text_split(const char *line, size_t len, int sep, text_field *fields, int max);

/* Strict parsers of a whole field (leading/trailing blanks allowed). */
bool text_parse_i64(text_field f, int64_t *out);
bool text_parse_f64(text_field f, double *out);

#define TEXT_BAD_SHOWN 10

typedef struct text_bad {
    bool skip;            /* --skip-bad */
    int64_t count;        /* rows skipped so far */
} text_bad;

/* Reports a malformed row of f at its current line. Without skip: fills err
 * with "PATH:LINE: <message>" and returns HSTU_ERR_FORMAT. With skip: counts
 * it, prints the first TEXT_BAD_SHOWN to stderr, and returns HSTU_OK (the
 * caller then skips the row). */
hstu_status text_bad_row(text_bad *b, const text_file *f, hstu_error *err, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

#endif
