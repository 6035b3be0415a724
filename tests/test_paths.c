/* test_paths.c - core_mkdir_p: nested creation, existing paths, errors. */
#include "harness.h"

#include "core/paths.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static void test_mkdir_p(void)
{
    char base[] = "/tmp/hstu_test_paths_XXXXXX";
    T_REQUIRE(mkdtemp(base), "mkdtemp");
    char path[512];
    snprintf(path, sizeof path, "%s/a//b/c/", base);
    hstu_error err = {0};
    T_CHECK(core_mkdir_p(path, &err) == HSTU_OK, "nested: %s", err.msg);
    snprintf(path, sizeof path, "%s/a/b/c", base);
    struct stat sb;
    T_CHECK(stat(path, &sb) == 0 && S_ISDIR(sb.st_mode), "a/b/c not created");
    T_CHECK(core_mkdir_p(path, &err) == HSTU_OK, "existing: %s", err.msg);
    snprintf(path, sizeof path, "%s/file", base);
    FILE *f = fopen(path, "w");
    T_REQUIRE(f, "fopen");
    fclose(f);
    snprintf(path, sizeof path, "%s/file/sub", base);
    T_CHECK(core_mkdir_p(path, &err) == HSTU_ERR_IO && strstr(err.msg, "file"), "under a file: %s", err.msg);
    snprintf(path, sizeof path, "%s/file", base);
    T_CHECK(core_mkdir_p(path, &err) == HSTU_ERR_IO && strstr(err.msg, "not a directory"), "a file: %s", err.msg);
    T_CHECK(core_mkdir_p("", &err) == HSTU_ERR_IO, "empty path accepted");
    char cmd[600];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", base);
    T_CHECK(system(cmd) == 0, "cleanup");
}

int main(void)
{
    t_run("paths: mkdir -p (nested, existing, under a file, empty)", test_mkdir_p);
    return t_summary();
}
