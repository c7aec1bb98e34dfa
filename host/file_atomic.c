/* lh_write_file_atomic: see file_atomic.h. */
#include "file_atomic.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static lh_status write_all(int fd, const void *buf, size_t n) {
    const char *p = buf;
    while (n) {
        ssize_t w = write(fd, p, n);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) return LH_ERR_IO;
        p += w;
        n -= (size_t)w;
    }
    return LH_OK;
}

/* temp + fsync + rename + fsync of the directory */
lh_status lh_write_file_atomic(const char *path, const void *buf, size_t n, lh_error *err) {
    size_t len = strlen(path);
    char *tmp = malloc(len + 32), *dir = malloc(len + 2);
    if (!tmp || !dir) {
        free(tmp);
        free(dir);
        return lh_error_set(err, LH_ERR_NOMEM, "%s: out of memory", path);
    }
    snprintf(tmp, len + 32, "%s.tmp.%ld", path, (long)getpid());
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    lh_status st = LH_OK;
    if (fd < 0) {
        st = lh_error_set(err, LH_ERR_IO, "%s: cannot create: %s", tmp, strerror(errno));
        goto out;
    }
    if (write_all(fd, buf, n) != LH_OK || fsync(fd) != 0) {
        st = lh_error_set(err, LH_ERR_IO, "%s: write failed: %s", tmp, strerror(errno));
        close(fd);
        unlink(tmp);
        goto out;
    }
    if (close(fd) != 0 || rename(tmp, path) != 0) {
        st = lh_error_set(err, LH_ERR_IO, "%s: cannot write: %s", path, strerror(errno));
        unlink(tmp);
        goto out;
    }
    memcpy(dir, path, len + 1);
    char *slash = strrchr(dir, '/');
    if (slash) *(slash == dir ? slash + 1 : slash) = 0;
    else strcpy(dir, ".");
    int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd >= 0) {
        fsync(dfd); /* best effort: some file systems refuse fsync on directories */
        close(dfd);
    }
out:
    free(tmp);
    free(dir);
    return st;
}

