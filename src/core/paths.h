/* paths.h - small filesystem helpers. */
#ifndef HSTU_CORE_PATHS_H
#define HSTU_CORE_PATHS_H

#include "hstu.h"

/* Creates dir and any missing parents (mode 0755), like `mkdir -p`; an
 * existing directory is fine. HSTU_ERR_IO naming the part that failed. */
hstu_status core_mkdir_p(const char *dir, hstu_error *err);

#endif
