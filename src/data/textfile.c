/* textfile.c - mapped text inputs, fields, strict numbers, bad rows. See textfile.h. */
#include "data/textfile.h"

#include "core/status.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdarg.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

hstu_status text_open(const char *path, text_file *f, hstu_error *err)
{
    memset(f, 0, sizeof *f);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return hstu_fail(err, HSTU_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    struct stat sb;
    if (fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode)) {
        close(fd);
        return hstu_fail(err, HSTU_ERR_IO, "%s: not a regular file", path);
    }
    f->path = path;
    f->size = (size_t)sb.st_size;
    if (f->size > 0) {
        void *p = mmap(NULL, f->size, PROT_READ, MAP_PRIVATE, fd, 0);
        if (p == MAP_FAILED) {
            close(fd);
            return hstu_fail(err, HSTU_ERR_IO, "%s: cannot map: %s", path, strerror(errno));
        }
        madvise(p, f->size, MADV_SEQUENTIAL);
        f->map = p;
        f->buf = p;
        if (f->size >= 3 && !memcmp(p, "\xEF\xBB\xBF", 3))
            f->pos = 3; /* a UTF-8 byte order mark (spreadsheet exports) is not data */
    }
    close(fd);
    return HSTU_OK;
}

void text_close(text_file *f)
{
    if (f->map)
        munmap(f->map, f->size);
    memset(f, 0, sizeof *f);
}

bool text_next_line(text_file *f, const char **line, size_t *len)
{
    if (f->pos >= f->size)
        return false;
    const char *s = f->buf + f->pos;
    const char *nl = memchr(s, '\n', f->size - f->pos);
    size_t n = nl ? (size_t)(nl - s) : f->size - f->pos;
    f->pos += n + (nl ? 1 : 0);
    if (n > 0 && s[n - 1] == '\r')
        n--;
    f->line++;
    *line = s;
    *len = n;
    return true;
}

int text_split(const char *line, size_t len, int sep, text_field *fields, int max)
{
    int n = 0;
    size_t i = 0;
    if (sep == TEXT_SEP_BLANKS) {
        for (;;) {
            while (i < len && (line[i] == ' ' || line[i] == '\t'))
                i++;
            if (i >= len)
                return n;
            size_t b = i;
            while (i < len && line[i] != ' ' && line[i] != '\t')
                i++;
            if (n == max)
                return max + 1;
            fields[n++] = (text_field){line + b, i - b};
        }
    }
    for (;;) {
        size_t b = i, e;
        if (sep == ',' && i < len && line[i] == '"') {
            size_t j = i + 1;
            while (j < len && !(line[j] == '"' && (j + 1 >= len || line[j + 1] != '"')))
                j += line[j] == '"' ? 2 : 1;
            b = i + 1;
            e = j < len ? j : len;
            i = j < len ? j + 1 : len;
            while (i < len && line[i] != ',')
                i++;
        } else if (sep == TEXT_SEP_DCOLON) {
            while (i < len && !(line[i] == ':' && i + 1 < len && line[i + 1] == ':'))
                i++;
            e = i;
        } else {
            while (i < len && line[i] != sep)
                i++;
            e = i;
        }
        if (n == max)
            return max + 1;
        fields[n++] = (text_field){line + b, e - b};
        if (i >= len)
            return n;
        i += sep == TEXT_SEP_DCOLON ? 2 : 1;
    }
}

static text_field trim(text_field f)
{
    while (f.len && (f.s[0] == ' ' || f.s[0] == '\t')) {
        f.s++;
        f.len--;
    }
    while (f.len && (f.s[f.len - 1] == ' ' || f.s[f.len - 1] == '\t'))
        f.len--;
    return f;
}

bool text_parse_i64(text_field f, int64_t *out)
{
    f = trim(f);
    if (f.len == 0 || f.len > 20)
        return false;
    size_t i = 0;
    bool neg = false;
    if (f.s[0] == '-' || f.s[0] == '+') {
        neg = f.s[0] == '-';
        i = 1;
        if (f.len == 1)
            return false;
    }
    uint64_t v = 0;
    for (; i < f.len; i++) {
        unsigned d = (unsigned)(f.s[i] - '0');
        if (d > 9)
            return false;
        if (v > (UINT64_MAX - d) / 10)
            return false;
        v = v * 10 + d;
    }
    if (neg ? v > (uint64_t)INT64_MAX + 1 : v > (uint64_t)INT64_MAX)
        return false;
    *out = neg ? (int64_t)(0 - v) : (int64_t)v;
    return true;
}

bool text_parse_f64(text_field f, double *out)
{
    f = trim(f);
    char buf[64];
    if (f.len == 0 || f.len >= sizeof buf)
        return false;
    memcpy(buf, f.s, f.len);
    buf[f.len] = 0;
    char *end;
    errno = 0;
    double v = strtod(buf, &end);
    if (errno || *end || !isfinite(v))
        return false;
    *out = v;
    return true;
}

hstu_status text_bad_row(text_bad *b, const text_file *f, hstu_error *err, const char *fmt, ...)
{
    char msg[HSTU_MSG_MAX];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (!b->skip)
        return hstu_fail(err, HSTU_ERR_FORMAT, "%s:%lld: %s (--skip-bad counts and skips such rows)",
                         f->path, (long long)f->line, msg);
    if (b->count < TEXT_BAD_SHOWN)
        fprintf(stderr, "hstu prep: skipped %s:%lld: %s\n", f->path, (long long)f->line, msg);
    b->count++;
    return HSTU_OK;
}
