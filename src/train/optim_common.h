/* optim_common.h - small pieces the optimizers (adamw.c, muon.c) share. */
#ifndef TS_OPTIM_COMMON_H
#define TS_OPTIM_COMMON_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* A heap copy of a parameter's name, or "param<index>" when it has none; names key the
 * optimizer state buffers written into checkpoints. NULL when out of memory. */
static inline char *optim_param_name_copy(const char *name, int index) {
    char fallback[32];
    if (!name) {
        snprintf(fallback, sizeof fallback, "param%d", index);
        name = fallback;
    }
    size_t len = strlen(name);
    char *copy = malloc(len + 1);
    if (copy) memcpy(copy, name, len + 1);
    return copy;
}

#endif
