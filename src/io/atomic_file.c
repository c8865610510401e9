/* atomic_file.c - crash-safe file replacement for every layer that writes files (safetensors
 * checkpoints, training checkpoints, configs, logs that are rewritten whole).
 *
 * The recipe is the standard POSIX one: write everything to a temporary file in the same
 * directory (rename is only atomic within one file system), fsync it so its data is on disk
 * before its name is, rename it over the target (readers see either the old file or the new
 * one, never a mix), then fsync the directory so the rename itself survives a power cut.
 * The temporary name carries the pid so that two processes writing the same target do not
 * trample each other's temporary file; O_EXCL makes a clash an explicit retry, not a silent
 * overwrite. */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "tessera/io.h"

struct ts_atomic_file {
    char *path;      /* the target */
    char *tmp_path;  /* where the data goes until commit */
    int fd;
    bool failed;     /* a write failed: commit must not publish a partial file */
};

/* Tries "<path>.tmp.<pid>", then "<path>.tmp.<pid>.1" ... so a stale or concurrent temporary
 * file with the first name (another thread, or a dead process whose pid was reused) is never
 * reused. Returns the open fd or -1 with errno set. */
static int create_tmp(const char *path, char **tmp_path_out) {
    enum { MAX_TRIES = 64 };
    size_t room = strlen(path) + 64;
    char *tmp = malloc(room);
    if (!tmp) {
        errno = ENOMEM;
        return -1;
    }
    for (int k = 0; k < MAX_TRIES; k++) {
        if (k == 0)
            snprintf(tmp, room, "%s.tmp.%ld", path, (long)getpid());
        else
            snprintf(tmp, room, "%s.tmp.%ld.%d", path, (long)getpid(), k);
        int fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
        if (fd >= 0) {
            *tmp_path_out = tmp;
            return fd;
        }
        if (errno != EEXIST) break;
    }
    free(tmp);
    return -1;
}

ts_status ts_atomic_file_open(const char *path, ts_atomic_file **out, ts_io_error *err) {
    if (!path || !*path || !out)
        return ts_io_set_error(err, TS_ERR_INVALID_ARG, "atomic file open: path and out are required");
    *out = NULL;
    ts_atomic_file *f = calloc(1, sizeof *f);
    if (!f || !(f->path = strdup(path))) {
        free(f);
        return ts_io_set_error(err, TS_ERR_OOM, "%s: out of memory opening for an atomic write", path);
    }
    f->fd = create_tmp(path, &f->tmp_path);
    if (f->fd < 0) {
        int e = errno;
        free(f->path);
        free(f);
        return ts_io_set_error(err, TS_ERR_IO, "%s: cannot create a temporary file beside it: %s",
                               path, strerror(e));
    }
    *out = f;
    return TS_OK;
}

const char *ts_atomic_file_tmp_path(const ts_atomic_file *f) { return f ? f->tmp_path : NULL; }

/* write(2) may write less than asked (large sizes, signals); loop until done. */
static bool write_all(int fd, const void *data, size_t size) {
    const char *p = data;
    while (size > 0) {
        size_t chunk = size > (size_t)1 << 30 ? (size_t)1 << 30 : size;
        ssize_t n = write(fd, p, chunk);
        if (n < 0) {
            if (errno == EINTR) continue;
            return false;
        }
        if (n == 0) {
            errno = EIO;
            return false;
        }
        p += n;
        size -= (size_t)n;
    }
    return true;
}

ts_status ts_atomic_file_write(ts_atomic_file *f, const void *data, size_t size, ts_io_error *err) {
    if (!f) return ts_io_set_error(err, TS_ERR_INVALID_ARG, "atomic file write: no file");
    if (f->failed)
        return ts_io_set_error(err, TS_ERR_STATE, "%s: an earlier write failed; abort the file", f->path);
    if (size > 0 && !data)
        return ts_io_set_error(err, TS_ERR_INVALID_ARG, "%s: write of %zu bytes from NULL", f->path, size);
    if (!write_all(f->fd, data, size)) {
        int e = errno;
        f->failed = true;
        return ts_io_set_error(err, TS_ERR_IO, "%s: writing %s failed: %s", f->path, f->tmp_path,
                               strerror(e));
    }
    return TS_OK;
}

static void free_handle(ts_atomic_file *f) {
    free(f->path);
    free(f->tmp_path);
    free(f);
}

void ts_atomic_file_abort(ts_atomic_file *f) {
    if (!f) return;
    if (f->fd >= 0) close(f->fd);
    unlink(f->tmp_path);
    free_handle(f);
}

/* Copies the directory part of path ("." when there is none) into buf. */
static void parent_dir(const char *path, char *buf, size_t room) {
    const char *slash = strrchr(path, '/');
    if (!slash) {
        snprintf(buf, room, ".");
    } else if (slash == path) {
        snprintf(buf, room, "/");
    } else {
        size_t n = (size_t)(slash - path);
        if (n >= room) n = room - 1;
        memcpy(buf, path, n);
        buf[n] = '\0';
    }
}

ts_status ts_fsync_parent_dir(const char *path, ts_io_error *err) {
    char dir[PATH_MAX];
    parent_dir(path, dir, sizeof dir);
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0)
        return ts_io_set_error(err, TS_ERR_IO, "%s: cannot open directory '%s' to sync it: %s", path,
                               dir, strerror(errno));
    int rc = fsync(fd);
    int e = errno;
    close(fd);
    /* Some file systems refuse fsync on a directory (EINVAL); the rename is as durable as they
     * can make it, so that is not a failure of ours. */
    if (rc != 0 && e != EINVAL)
        return ts_io_set_error(err, TS_ERR_IO, "%s: fsync of directory '%s' failed: %s", path, dir,
                               strerror(e));
    return TS_OK;
}

ts_status ts_atomic_file_commit(ts_atomic_file *f, ts_io_error *err) {
    if (!f) return ts_io_set_error(err, TS_ERR_INVALID_ARG, "atomic file commit: no file");
    ts_status s = TS_OK;
    if (f->failed) {
        s = ts_io_set_error(err, TS_ERR_STATE, "%s: not committed because a write failed", f->path);
    } else if (fsync(f->fd) != 0) {
        s = ts_io_set_error(err, TS_ERR_IO, "%s: fsync of %s failed: %s", f->path, f->tmp_path,
                            strerror(errno));
    }
    /* close can report a deferred write error (NFS); it counts. */
    int rc = close(f->fd);
    f->fd = -1;
    if (s == TS_OK && rc != 0)
        s = ts_io_set_error(err, TS_ERR_IO, "%s: closing %s failed: %s", f->path, f->tmp_path,
                            strerror(errno));
    if (s == TS_OK && rename(f->tmp_path, f->path) != 0)
        s = ts_io_set_error(err, TS_ERR_IO, "%s: renaming %s over it failed: %s", f->path,
                            f->tmp_path, strerror(errno));
    if (s != TS_OK) {
        ts_atomic_file_abort(f);
        return s;
    }
    s = ts_fsync_parent_dir(f->path, err);
    free_handle(f);
    return s;
}

ts_status ts_atomic_write_file(const char *path, const void *data, size_t size, ts_io_error *err) {
    ts_atomic_file *f;
    ts_status s = ts_atomic_file_open(path, &f, err);
    if (s != TS_OK) return s;
    s = ts_atomic_file_write(f, data, size, err);
    if (s != TS_OK) {
        ts_atomic_file_abort(f);
        return s;
    }
    return ts_atomic_file_commit(f, err);
}
