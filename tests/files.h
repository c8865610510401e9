/* files.h - file helpers the test programs share: whole-file reads and writes and the path of a
 * committed fixture. Tests compile by absolute path (CMake), so __FILE__ here names tests/ and
 * the fixtures sit in tests/fixtures/<set>/. */
#ifndef TS_TEST_FILES_H
#define TS_TEST_FILES_H

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The whole file, malloc'd and NUL-terminated (so text can be used as a string), its size in
 * *len when len is non-NULL; NULL when it cannot be read. */
static inline char *test_read_file(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    char *buf = NULL;
    long n = fseek(f, 0, SEEK_END) == 0 ? ftell(f) : -1;
    if (n >= 0 && fseek(f, 0, SEEK_SET) == 0 && (buf = malloc((size_t)n + 1)) != NULL &&
        fread(buf, 1, (size_t)n, f) != (size_t)n) {
        free(buf);
        buf = NULL;
    }
    fclose(f);
    if (buf) {
        buf[n] = '\0';
        if (len) *len = (size_t)n;
    }
    return buf;
}

/* Writes len bytes to path (replacing it); false on any failure. */
static inline bool test_write_file(const char *path, const void *data, size_t len) {
    FILE *f = fopen(path, "wb");
    if (!f) return false;
    bool ok = len == 0 || fwrite(data, 1, len, f) == len;
    return fclose(f) == 0 && ok;
}

/* tests/fixtures/<set>/<name>, in one of a few rotating static buffers (several may be live in
 * one call's arguments). */
static inline const char *test_fixture_path(const char *set, const char *name) {
    static char buf[4][2048];
    static int next;
    char *p = buf[next++ % 4];
    const char *slash = strrchr(__FILE__, '/');
    int dir_len = slash ? (int)(slash - __FILE__) : 1;
    snprintf(p, sizeof buf[0], "%.*s/fixtures/%s/%s", dir_len, slash ? __FILE__ : ".", set, name);
    return p;
}

#endif
