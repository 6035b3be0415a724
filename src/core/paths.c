/* paths.c - small filesystem helpers (paths.h). */
#include "core/paths.h"

#include "core/status.h"

#include <errno.h>
#include <limits.h>
#include <string.h>
#include <sys/stat.h>

static hstu_status make_one(const char *path, hstu_error *err)
{
    if (mkdir(path, 0755) == 0 || errno == EEXIST) {
        struct stat sb;
        if (stat(path, &sb) == 0 && S_ISDIR(sb.st_mode))
            return HSTU_OK;
        return hstu_fail(err, HSTU_ERR_IO, "%s: exists and is not a directory", path);
    }
    return hstu_fail(err, HSTU_ERR_IO, "%s: cannot create directory: %s", path, strerror(errno));
}

hstu_status core_mkdir_p(const char *dir, hstu_error *err)
{
    char path[PATH_MAX];
    size_t n = strlen(dir);
    if (n == 0 || n >= sizeof path)
        return hstu_fail(err, HSTU_ERR_IO, "directory path of %zu bytes: must be 1..%zu", n, sizeof path - 1);
    memcpy(path, dir, n + 1);
    for (size_t i = 1; i < n; i++)
        if (path[i] == '/' && path[i - 1] != '/') {
            path[i] = 0;
            hstu_status st = make_one(path, err);
            path[i] = '/';
            if (st != HSTU_OK)
                return st;
        }
    return make_one(path, err);
}
