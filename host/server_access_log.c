/* The server's access log: one JSON object per line per request, in
 * <log_dir>/access-YYYY-MM-DD.jsonl (UTC days). A new file starts with
 * each day; files of that name older than log_keep_days days are deleted
 * at start and at each new day. API keys never appear: a request's key is
 * logged as its position in the configured list. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "log.h"
#include "server_internal.h"

static void day_of(char out[16], time_t t) {
    struct tm tm;
    if (!gmtime_r(&t, &tm)) {
        snprintf(out, 16, "1970-01-01");
        return;
    }
    strftime(out, 16, "%Y-%m-%d", &tm);
}

/* Delete access-YYYY-MM-DD.jsonl files older than keep_days days (today
 * counts as one). Names compare as dates. */
static void prune(const lh_server *s, time_t now) {
    if (!s->o.log_keep_days) return;
    char oldest[16];
    day_of(oldest, now - (time_t)(s->o.log_keep_days - 1) * 86400);
    DIR *d = opendir(s->o.log_dir);
    if (!d) return;
    struct dirent *e;
    while ((e = readdir(d))) {
        int y, mo, da, end = 0;
        if (strlen(e->d_name) != strlen("access-0000-00-00.jsonl") ||
            sscanf(e->d_name, "access-%4d-%2d-%2d.jsonl%n", &y, &mo, &da, &end) != 3 ||
            end != (int)strlen(e->d_name))
            continue;
        if (strncmp(e->d_name + 7, oldest, 10) >= 0) continue;
        char path[4096];
        if (snprintf(path, sizeof path, "%s/%s", s->o.log_dir, e->d_name) >= (int)sizeof path)
            continue;
        if (unlink(path)) lh_log(LH_LOG_WARN, "serve", "access log: cannot delete %s: %s", path,
                                 strerror(errno));
    }
    closedir(d);
}

/* Called with log_mu held: the file for `day` open in s->log_file. */
static lh_status open_day(lh_server *s, const char *day, time_t now, lh_error *err) {
    if (s->log_file) fclose(s->log_file);
    s->log_file = NULL;
    char path[4096];
    if (snprintf(path, sizeof path, "%s/access-%s.jsonl", s->o.log_dir, day) >= (int)sizeof path)
        return lh_error_set(err, LH_ERR_INVALID, "server.log_dir: path too long");
    int fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0640);
    FILE *f = fd >= 0 ? fdopen(fd, "a") : NULL;
    if (!f) {
        int e = errno;
        if (fd >= 0) close(fd);
        return lh_error_set(err, LH_ERR_IO, "server.log_dir: cannot open %s: %s", path,
                            strerror(e));
    }
    s->log_file = f;
    snprintf(s->log_day, sizeof s->log_day, "%s", day);
    prune(s, now);
    return LH_OK;
}

lh_status lh__access_log_open(lh_server *s, lh_error *err) {
    if (!s->o.log_dir || !*s->o.log_dir) return LH_OK;
    struct stat sb;
    if (stat(s->o.log_dir, &sb) || !S_ISDIR(sb.st_mode))
        return lh_error_set(err, LH_ERR_NOT_FOUND, "server.log_dir: %s is not a directory",
                            s->o.log_dir);
    time_t now = time(NULL);
    char day[16];
    day_of(day, now);
    pthread_mutex_lock(&s->log_mu);
    lh_status st = open_day(s, day, now, err);
    pthread_mutex_unlock(&s->log_mu);
    return st;
}

void lh__access_log_write(lh_server *s, const char *line) {
    if (!s->o.log_dir || !*s->o.log_dir) return;
    time_t now = time(NULL);
    char day[16];
    day_of(day, now);
    pthread_mutex_lock(&s->log_mu);
    lh_error err = {0};
    if (strcmp(day, s->log_day) && open_day(s, day, now, &err) != LH_OK)
        lh_log(LH_LOG_ERROR, "serve", "access log: %s", err.msg);
    if (s->log_file && (fputs(line, s->log_file) < 0 || fputc('\n', s->log_file) < 0 ||
                        fflush(s->log_file))) {
        lh_log(LH_LOG_ERROR, "serve", "access log: write failed: %s", strerror(errno));
        clearerr(s->log_file);
    }
    pthread_mutex_unlock(&s->log_mu);
}

void lh__access_log_close(lh_server *s) {
    if (s->log_file) fclose(s->log_file);
    s->log_file = NULL;
}
