/* server_load: an open-loop HTTP/1.1 load generator for `lorahost serve`
 * (POSIX sockets + pthreads, nothing else). bench/server_load.sh and
 * tests/cli_serve_load.sh drive it; build: cmake --build build --target server_load.
 *
 *   server_load --url http://127.0.0.1:PORT/generate --rate R --duration S
 *               --connections C (--body FILE | --body-json '{...}') [--key KEY]
 *               [--timeout S] [--json-out FILE]
 *   server_load --get http://127.0.0.1:PORT/metrics     (one GET, body to stdout)
 *
 * Request i is due at start + i/R whatever happened to the earlier ones (open
 * loop). C threads, each with one keep-alive connection, take the next due
 * request when they are free; a request sent late because every connection
 * was busy has its latency counted from the time it was due, so a slow server
 * cannot hide its latency by slowing the sender (coordinated omission). A
 * connection the server closes (Connection: close, or EOF) is reopened.
 * Every socket operation waits with poll() against the request's deadline and
 * a global one, so the run ends by duration + timeout + 1 s whatever the
 * server does. With a body the request is a POST (application/json), else a GET. */
#include <arpa/inet.h>
#include <errno.h>
#include <math.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define NAME "server_load"
#define MAX_REQUESTS 10000000L
#define MAX_HEADER 65536
#define LATE_S 0.010 /* a send this much after its due time counts as late */

/* ---- Options ---- */

typedef struct opts {
    char host[256], port[16], path[2048];
    double rate, duration, timeout;
    long connections;
    char *body; /* owned; NULL: GET */
    size_t body_len;
    const char *key, *json_out;
} opts;

static void usage(FILE *out) {
    fprintf(out,
            "usage: " NAME " --url http://HOST:PORT/PATH --rate R --duration S --connections C\n"
            "                   [--body FILE | --body-json JSON] [--key KEY] [--timeout S]\n"
            "                   [--json-out FILE]\n"
            "       " NAME " --get http://HOST:PORT/PATH\n"
            "\n"
            "  --rate R         requests per second offered, on a fixed schedule (open loop)\n"
            "  --duration S     seconds of sending; R*S requests in all\n"
            "  --connections C  keep-alive connections (one thread each), 1..1024\n"
            "  --body FILE, --body-json JSON   POST this (application/json); none: GET\n"
            "  --key KEY        send 'Authorization: Bearer KEY'\n"
            "  --timeout S      per request (connect to last byte), default 30\n"
            "  --json-out FILE  also write the summary as JSON (one field per line)\n"
            "  --get URL        one GET; the body to stdout; exit 0 on 200\n");
}

static int parse_num(const char *flag, const char *v, double lo, double hi, double *out) {
    char *end;
    errno = 0;
    double x = strtod(v, &end);
    if (errno || end == v || *end || !isfinite(x) || x < lo || x > hi) {
        fprintf(stderr, NAME ": %s: expected a number in %g..%g, got '%s'\n", flag, lo, hi, v);
        return -1;
    }
    *out = x;
    return 0;
}

/* http://HOST[:PORT][/PATH]; no https, no user info. */
static int parse_url(const char *url, opts *o) {
    const char *p = url;
    if (strncmp(p, "http://", 7)) {
        fprintf(stderr, NAME ": %s: the URL must start with http:// (no https)\n", url);
        return -1;
    }
    p += 7;
    size_t n = strcspn(p, ":/");
    if (n == 0 || n >= sizeof o->host) {
        fprintf(stderr, NAME ": %s: no host, or a host too long\n", url);
        return -1;
    }
    memcpy(o->host, p, n);
    o->host[n] = 0;
    p += n;
    snprintf(o->port, sizeof o->port, "80");
    if (*p == ':') {
        p++;
        size_t k = strspn(p, "0123456789");
        long port = k && k < 6 ? strtol(p, NULL, 10) : -1;
        if (port < 1 || port > 65535 || (p[k] && p[k] != '/')) {
            fprintf(stderr, NAME ": %s: the port must be 1..65535\n", url);
            return -1;
        }
        snprintf(o->port, sizeof o->port, "%ld", port);
        p += k;
    }
    if (strlen(p) >= sizeof o->path || strpbrk(p, " \r\n")) {
        fprintf(stderr, NAME ": %s: a path too long or with spaces\n", url);
        return -1;
    }
    snprintf(o->path, sizeof o->path, "%s", *p ? p : "/");
    return 0;
}

static int read_file(const char *path, char **out, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) {
        fprintf(stderr, NAME ": --body %s: %s\n", path, strerror(errno));
        return -1;
    }
    size_t cap = 4096, n = 0;
    char *b = malloc(cap);
    for (size_t k; b && (k = fread(b + n, 1, cap - n, f)) > 0;) {
        n += k;
        if (n == cap) {
            char *nb = cap < ((size_t)1 << 30) ? realloc(b, cap * 2) : NULL;
            if (!nb) {
                free(b);
                b = NULL;
                break;
            }
            b = nb;
            cap *= 2;
        }
    }
    int bad = ferror(f);
    fclose(f);
    if (!b || bad) {
        fprintf(stderr, NAME ": --body %s: %s\n", path, b ? "read error" : "out of memory (or over 1 GiB)");
        free(b);
        return -1;
    }
    *out = b;
    *len = n;
    return 0;
}

/* ---- Time ---- */

static double now_s(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

static void sleep_until(double t) {
    struct timespec ts;
    ts.tv_sec = (time_t)t;
    ts.tv_nsec = (long)((t - (double)ts.tv_sec) * 1e9);
    if (ts.tv_nsec >= 1000000000L) ts.tv_nsec = 999999999L;
    while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR) {
    }
}

/* ---- One HTTP exchange with deadlines ---- */

enum { ERR_NONE, ERR_CONNECT, ERR_IO, ERR_TIMEOUT, ERR_PARSE, ERR_EOF_EARLY };
static const char *const ERR_NAMES[] = {"none", "connect", "io", "timeout", "parse",
                                        "closed before any reply"};

typedef struct conn {
    int fd;
    int reused; /* this connection already carried a reply */
    char *buf;  /* the reply being read */
    size_t len, cap;
} conn;

typedef struct reply {
    int status, err, retry_after, close, body_ok;
} reply;

/* poll for ev until the deadline: 1 ready, 0 timed out, -1 error */
static int wait_fd(int fd, short ev, double deadline) {
    for (;;) {
        double left = deadline - now_s();
        if (left <= 0) return 0;
        struct pollfd p = {fd, ev, 0};
        int ms = left > 1000 ? 1000000 : (int)ceil(left * 1000);
        int k = poll(&p, 1, ms);
        if (k > 0) return 1;
        if (k < 0 && errno != EINTR) return -1;
    }
}

static int open_conn(const struct sockaddr_storage *sa, socklen_t sa_len, double deadline,
                     int *err) {
    int fd = socket(sa->ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        *err = ERR_CONNECT;
        return -1;
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (connect(fd, (const struct sockaddr *)sa, sa_len) && errno != EINPROGRESS) {
        close(fd);
        *err = ERR_CONNECT;
        return -1;
    }
    int w = wait_fd(fd, POLLOUT, deadline), soerr = 0;
    socklen_t sl = sizeof soerr;
    if (w <= 0 || getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &sl) || soerr) {
        close(fd);
        *err = w == 0 ? ERR_TIMEOUT : ERR_CONNECT;
        return -1;
    }
    return fd;
}

static int send_all(int fd, const char *p, size_t n, double deadline) {
    while (n) {
        ssize_t k = send(fd, p, n, MSG_NOSIGNAL);
        if (k > 0) {
            p += k;
            n -= (size_t)k;
        } else if (k < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) {
            int w = wait_fd(fd, POLLOUT, deadline);
            if (w <= 0) return w == 0 ? ERR_TIMEOUT : ERR_IO;
        } else {
            return ERR_IO;
        }
    }
    return ERR_NONE;
}

/* Reads more into c->buf: >0 bytes read, 0 EOF, <0 -ERR_* */
static long read_more(conn *c, double deadline) {
    if (c->cap - c->len < 4096) {
        size_t cap = c->cap ? c->cap * 2 : 65536;
        char *b = cap > c->cap ? realloc(c->buf, cap) : NULL;
        if (!b) return -ERR_IO;
        c->buf = b;
        c->cap = cap;
    }
    for (;;) {
        ssize_t k = recv(c->fd, c->buf + c->len, c->cap - c->len - 1, 0);
        if (k >= 0) {
            c->len += (size_t)k;
            c->buf[c->len] = 0;
            return (long)k;
        }
        if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) return -ERR_IO;
        int w = wait_fd(c->fd, POLLIN, deadline);
        if (w <= 0) return w == 0 ? -ERR_TIMEOUT : -ERR_IO;
    }
}

/* The value of header `name` in the header block [h, end), or NULL. */
static const char *header(const char *h, const char *end, const char *name, size_t *vlen) {
    size_t n = strlen(name);
    for (const char *line = h; line < end;) {
        const char *eol = strstr(line, "\r\n");
        if (!eol || eol > end) eol = end;
        if ((size_t)(eol - line) > n && line[n] == ':' && !strncasecmp(line, name, n)) {
            const char *v = line + n + 1;
            while (v < eol && (*v == ' ' || *v == '\t')) v++;
            *vlen = (size_t)(eol - v);
            return v;
        }
        line = eol + 2;
    }
    return NULL;
}

static int body_ok(const char *ctype, size_t ctlen, const char *b, size_t n) {
    static const char PNG_SIG[8] = {(char)0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};
    if (ctype && ctlen >= 9 && !strncasecmp(ctype, "image/png", 9))
        return n > 8 && !memcmp(b, PNG_SIG, 8);
    if (ctype && ctlen >= 16 && !strncasecmp(ctype, "application/json", 16)) {
        while (n && (*b == ' ' || *b == '\n' || *b == '\r' || *b == '\t')) b++, n--;
        return n > 2 && b[0] == '{' && memmem(b, n, "\"images\"", 8) != NULL;
    }
    return 0;
}

/* The chunked body from c->buf + start: once it is all in, decoded in place
 * and its length returned; -1 while more bytes are needed, -2 if malformed. */
static long dechunk(conn *c, size_t start) {
    size_t in = start, out = start;
    for (int pass = 0; pass < 2; pass++) { /* 0: is it all in? 1: decode */
        in = out = start;
        for (;;) {
            const char *p = c->buf + in, *eol = memmem(p, c->len - in, "\r\n", 2);
            if (!eol) return -1;
            char *end;
            unsigned long long sz = strtoull(p, &end, 16);
            if (end == p || sz > ((size_t)1 << 31)) return -2;
            size_t data = (size_t)(eol - c->buf) + 2;
            if (sz == 0) { /* optional trailers, then an empty line */
                const char *fin = memmem(c->buf + data - 2, c->len - (data - 2), "\r\n\r\n", 4);
                if (!fin) return -1;
                break;
            }
            if (c->len < data + sz + 2) return -1;
            if (memcmp(c->buf + data + sz, "\r\n", 2)) return -2;
            if (pass) memmove(c->buf + out, c->buf + data, sz);
            out += sz;
            in = data + sz + 2;
        }
    }
    c->len = out;
    c->buf[c->len] = 0;
    return (long)(out - start);
}

static void drop(conn *c) {
    if (c->fd >= 0) close(c->fd);
    c->fd = -1;
    c->reused = 0;
}

/* One request on c (opened if need be): fills r. is_get: GET, no body. */
static void exchange(conn *c, const struct sockaddr_storage *sa, socklen_t sa_len,
                     const char *head, size_t head_len, const opts *o, int is_get,
                     double deadline, reply *r) {
    memset(r, 0, sizeof *r);
    for (int attempt = 0;; attempt++) {
        if (c->fd < 0) {
            c->fd = open_conn(sa, sa_len, deadline, &r->err);
            if (c->fd < 0) return;
        }
        int was_reused = c->reused;
        c->len = 0;
        int e = send_all(c->fd, head, head_len, deadline);
        if (!e && !is_get && o->body_len) e = send_all(c->fd, o->body, o->body_len, deadline);
        /* the server may answer early (429) and close before the body is in: read anyway */
        char *hend = NULL;
        long k = 1;
        while (!(hend = c->len ? memmem(c->buf, c->len, "\r\n\r\n", 4) : NULL)) {
            if (c->len > MAX_HEADER) {
                r->err = ERR_PARSE;
                drop(c);
                return;
            }
            if ((k = read_more(c, deadline)) <= 0) break;
        }
        if (!hend) {
            int retry = was_reused && c->len == 0 && (k == 0 || k == -ERR_IO) && attempt == 0;
            r->err = k == 0 ? (c->len ? ERR_PARSE : ERR_EOF_EARLY) : (int)-k;
            if (e && r->err == ERR_EOF_EARLY) r->err = e;
            drop(c);
            if (retry) { /* a keep-alive connection the server had closed: once more */
                r->err = ERR_NONE;
                continue;
            }
            return;
        }
        size_t hlen = (size_t)(hend - c->buf) + 4;
        int minor = 0, status = 0;
        if (sscanf(c->buf, "HTTP/1.%d %3d", &minor, &status) != 2 || status < 100 || status > 599) {
            r->err = ERR_PARSE;
            drop(c);
            return;
        }
        size_t vl = 0, ctl = 0;
        const char *v;
        const char *ctype = header(c->buf, hend, "Content-Type", &ctl);
        r->retry_after = header(c->buf, hend, "Retry-After", &vl) != NULL && vl > 0;
        r->close = minor == 0 || ((v = header(c->buf, hend, "Connection", &vl)) && vl >= 5 &&
                                  !strncasecmp(v, "close", 5));
        int chunked = (v = header(c->buf, hend, "Transfer-Encoding", &vl)) && vl >= 7 &&
                      !strncasecmp(v, "chunked", 7);
        long long clen = -1;
        if (!chunked && (v = header(c->buf, hend, "Content-Length", &vl))) {
            char *end;
            clen = strtoll(v, &end, 10);
            if (end == v || clen < 0 || clen > (1LL << 31)) {
                r->err = ERR_PARSE;
                drop(c);
                return;
            }
        }
        /* the header block is kept in buf; ctype points into it, so copy what is needed */
        char ct[64] = {0};
        if (ctype) snprintf(ct, sizeof ct, "%.*s", (int)(ctl < 63 ? ctl : 63), ctype);
        size_t blen = 0;
        if (status < 200 || status == 204 || status == 304) {
            /* no body by definition (1xx is not expected: no Expect header is sent) */
        } else if (chunked) {
            long n;
            while ((n = dechunk(c, hlen)) == -1) {
                if ((k = read_more(c, deadline)) <= 0) break;
            }
            if (n < 0) {
                r->err = n == -2 ? ERR_PARSE : k == 0 ? ERR_PARSE : (int)-k;
                drop(c);
                return;
            }
            blen = (size_t)n;
        } else if (clen >= 0) {
            while (c->len < hlen + (size_t)clen) {
                if ((k = read_more(c, deadline)) <= 0) {
                    r->err = k == 0 ? ERR_PARSE : (int)-k;
                    drop(c);
                    return;
                }
            }
            blen = (size_t)clen;
        } else { /* no length: the body runs to EOF */
            while ((k = read_more(c, deadline)) > 0) {
            }
            if (k < 0) {
                r->err = (int)-k;
                drop(c);
                return;
            }
            r->close = 1;
            blen = c->len - hlen;
        }
        r->status = status;
        /* a GET (not a generation) has no image to check */
        r->body_ok = status == 200 && (is_get || body_ok(ct, strlen(ct), c->buf + hlen, blen));
        c->reused = 1;
        /* the body of a reply read, with nothing extra after it (no pipelining) */
        if (r->close || e) drop(c);
        c->len = hlen + blen; /* callers may read the body from c->buf + hlen */
        r->err = ERR_NONE;
        return;
    }
}

/* ---- The load run ---- */

typedef struct sample {
    int status;  /* HTTP status; 0 transport error; -1 not sent */
    int err;     /* ERR_* */
    float lat;   /* seconds from the due time to the last byte of the reply */
    float lag;   /* seconds the send started after its due time */
    unsigned char retry_after, body_ok;
} sample;

typedef struct run {
    const opts *o;
    struct sockaddr_storage sa;
    socklen_t sa_len;
    char *head;
    size_t head_len;
    long n;
    double start, deadline;
    atomic_long next;
    sample *s;
    atomic_long closed; /* connections closed after an exchange */
} run;

static void *worker(void *arg) {
    run *R = arg;
    conn c = {-1, 0, NULL, 0, 0};
    for (;;) {
        long i = atomic_fetch_add(&R->next, 1);
        if (i >= R->n) break;
        double due = R->start + (double)i / R->o->rate;
        sleep_until(due);
        double t = now_s();
        sample *s = &R->s[i];
        if (t >= R->deadline) {
            s->status = -1;
            continue;
        }
        double dl = t + R->o->timeout;
        if (dl > R->deadline) dl = R->deadline;
        reply r;
        exchange(&c, &R->sa, R->sa_len, R->head, R->head_len, R->o, R->o->body == NULL, dl, &r);
        if (!r.err && c.fd < 0) atomic_fetch_add(&R->closed, 1);
        double end = now_s();
        s->status = r.err ? 0 : r.status;
        s->err = r.err;
        s->lat = (float)(end - due);
        s->lag = (float)(t - due);
        s->retry_after = (unsigned char)r.retry_after;
        s->body_ok = (unsigned char)r.body_ok;
    }
    drop(&c);
    free(c.buf);
    return NULL;
}

static int cmp_float(const void *a, const void *b) {
    float x = *(const float *)a, y = *(const float *)b;
    return x < y ? -1 : x > y;
}

/* nearest-rank percentile of sorted v[0..n) */
static double pct(const float *v, long n, double p) {
    if (n <= 0) return NAN;
    long k = (long)ceil(p / 100.0 * (double)n);
    if (k < 1) k = 1;
    return v[k - 1];
}

typedef struct lat_summary {
    long n;
    double p50, p95, p99, max;
} lat_summary;

static void summarize(lat_summary *ls, float *v, long n) {
    qsort(v, (size_t)n, sizeof *v, cmp_float);
    ls->n = n;
    ls->p50 = pct(v, n, 50);
    ls->p95 = pct(v, n, 95);
    ls->p99 = pct(v, n, 99);
    ls->max = n ? v[n - 1] : NAN;
}

static int resolve(const opts *o, struct sockaddr_storage *sa, socklen_t *len) {
    struct addrinfo hints = {0}, *ai = NULL;
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    int e = getaddrinfo(o->host, o->port, &hints, &ai);
    if (e || !ai) {
        fprintf(stderr, NAME ": %s:%s: %s\n", o->host, o->port, gai_strerror(e));
        return -1;
    }
    memcpy(sa, ai->ai_addr, ai->ai_addrlen);
    *len = ai->ai_addrlen;
    freeaddrinfo(ai);
    return 0;
}

static char *make_head(const opts *o, size_t *len) {
    size_t cap = strlen(o->path) + strlen(o->host) + (o->key ? strlen(o->key) : 0) + 256;
    char *h = malloc(cap);
    if (!h) return NULL;
    int n;
    if (o->body)
        n = snprintf(h, cap,
                     "POST %s HTTP/1.1\r\nHost: %s:%s\r\nUser-Agent: " NAME "\r\n"
                     "Content-Type: application/json\r\nContent-Length: %zu\r\n%s%s%s\r\n",
                     o->path, o->host, o->port, o->body_len, o->key ? "Authorization: Bearer " : "",
                     o->key ? o->key : "", o->key ? "\r\n" : "");
    else
        n = snprintf(h, cap, "GET %s HTTP/1.1\r\nHost: %s:%s\r\nUser-Agent: " NAME "\r\n%s%s%s\r\n",
                     o->path, o->host, o->port, o->key ? "Authorization: Bearer " : "",
                     o->key ? o->key : "", o->key ? "\r\n" : "");
    if (n < 0 || (size_t)n >= cap) {
        free(h);
        return NULL;
    }
    *len = (size_t)n;
    return h;
}

static void print_lat(FILE *f, const char *what, const lat_summary *l) {
    if (!l->n) {
        fprintf(f, "| %s | 0 | - | - | - | - |\n", what);
        return;
    }
    fprintf(f, "| %s | %ld | %.1f ms | %.1f ms | %.1f ms | %.1f ms |\n", what, l->n, 1e3 * l->p50,
            1e3 * l->p95, 1e3 * l->p99, 1e3 * l->max);
}

static void json_lat(FILE *f, const char *what, const lat_summary *l, int last) {
    /* JSON has no NaN: null when there were none */
    const double v[4] = {l->p50, l->p95, l->p99, l->max};
    const char *k[4] = {"p50", "p95", "p99", "max"};
    for (int i = 0; i < 4; i++) {
        if (isnan(v[i]))
            fprintf(f, "  \"%s_ms_%s\": null%s\n", k[i], what, last && i == 3 ? "" : ",");
        else
            fprintf(f, "  \"%s_ms_%s\": %.3f%s\n", k[i], what, 1e3 * v[i], last && i == 3 ? "" : ",");
    }
}

static int load(const opts *o) {
    run R;
    memset(&R, 0, sizeof R);
    R.o = o;
    if (resolve(o, &R.sa, &R.sa_len)) return 1;
    double want = floor(o->rate * o->duration + 1e-9);
    if (want < 1 || want > MAX_REQUESTS) {
        fprintf(stderr, NAME ": --rate x --duration gives %.0f requests; expected 1..%ld\n", want,
                MAX_REQUESTS);
        return 2;
    }
    R.n = (long)want;
    R.head = make_head(o, &R.head_len);
    R.s = calloc((size_t)R.n, sizeof *R.s);
    pthread_t *th = calloc((size_t)o->connections, sizeof *th);
    if (!R.head || !R.s || !th) {
        fprintf(stderr, NAME ": out of memory for %ld requests\n", R.n);
        free(R.head);
        free(R.s);
        free(th);
        return 1;
    }
    atomic_init(&R.next, 0);
    atomic_init(&R.closed, 0);
    R.start = now_s() + 0.05;
    R.deadline = R.start + o->duration + o->timeout + 1;
    long started = 0;
    for (; started < o->connections; started++)
        if (pthread_create(&th[started], NULL, worker, &R)) break;
    if (started == 0) {
        fprintf(stderr, NAME ": cannot start a thread\n");
        free(R.head);
        free(R.s);
        free(th);
        return 1;
    }
    for (long i = 0; i < started; i++) pthread_join(th[i], NULL);
    double end = now_s();
    free(th);

    long n200 = 0, n429 = 0, n503 = 0, nother = 0, nerr = 0, nunsent = 0, no_ra = 0, bad = 0;
    long late = 0, errs[6] = {0};
    double max_lag = 0;
    float *l200 = malloc((size_t)R.n * sizeof *l200), *lall = malloc((size_t)R.n * sizeof *lall);
    float *l429 = malloc((size_t)R.n * sizeof *l429);
    if (!l200 || !lall || !l429) {
        fprintf(stderr, NAME ": out of memory\n");
        free(l200);
        free(lall);
        free(l429);
        free(R.head);
        free(R.s);
        return 1;
    }
    long k200 = 0, kall = 0, k429 = 0;
    char other_codes[256] = "";
    for (long i = 0; i < R.n; i++) {
        const sample *s = &R.s[i];
        if (s->status < 0) {
            nunsent++;
            continue;
        }
        if (s->lag > LATE_S) late++;
        if (s->lag > max_lag) max_lag = s->lag;
        if (s->status == 0) {
            nerr++;
            errs[s->err < 6 ? s->err : ERR_IO]++;
            continue;
        }
        lall[kall++] = s->lat;
        if (s->status == 200) {
            n200++;
            l200[k200++] = s->lat;
            if (!s->body_ok) bad++;
        } else if (s->status == 429) {
            n429++;
            l429[k429++] = s->lat;
            if (!s->retry_after) no_ra++;
        } else if (s->status == 503) {
            n503++;
        } else {
            if (nother++ < 8) {
                size_t at = strlen(other_codes);
                snprintf(other_codes + at, sizeof other_codes - at, "%s%d", at ? " " : "", s->status);
            }
        }
    }
    lat_summary s200, s429, sall;
    summarize(&s200, l200, k200);
    summarize(&s429, l429, k429);
    summarize(&sall, lall, kall);
    double elapsed = end - R.start, sent = (double)(R.n - nunsent);
    double thr = n200 / elapsed, offered = R.n / o->duration;

    printf(NAME ": %s http://%s:%s%s, %.1f requests/s offered for %.1f s (%ld requests), "
           "%ld keep-alive connections\n",
           o->body ? "POST" : "GET", o->host, o->port, o->path, offered, o->duration, R.n,
           o->connections);
    printf("| status | count | fraction of sent |\n|---|---|---|\n");
    printf("| 200 | %ld | %.3f |\n", n200, sent > 0 ? n200 / sent : 0);
    printf("| 429 | %ld | %.3f |\n", n429, sent > 0 ? n429 / sent : 0);
    printf("| 503 | %ld | %.3f |\n", n503, sent > 0 ? n503 / sent : 0);
    printf("| other | %ld%s%s%s | %.3f |\n", nother, nother ? " (" : "", other_codes,
           nother ? ")" : "", sent > 0 ? nother / sent : 0);
    printf("| transport errors | %ld | %.3f |\n", nerr, sent > 0 ? nerr / sent : 0);
    if (nerr)
        for (int e = 1; e < 6; e++)
            if (errs[e]) printf("|   %s | %ld | |\n", ERR_NAMES[e], errs[e]);
    if (nunsent) printf("| not sent (deadline) | %ld | |\n", nunsent);
    printf("\n| latency from due time | n | p50 | p95 | p99 | max |\n|---|---|---|---|---|---|\n");
    print_lat(stdout, "200", &s200);
    print_lat(stdout, "429", &s429);
    print_lat(stdout, "all replies", &sall);
    printf("\noffered %.1f/s, accepted (200) %.2f/s over %.2f s; accepted / offered %.3f\n",
           offered, thr, elapsed, sent > 0 ? n200 / sent : 0);
    printf("429 without Retry-After: %ld; 200 without a PNG/JSON image body: %ld; "
           "sends late by >%.0f ms: %ld (max %.1f ms); connections closed after a reply: %ld\n",
           no_ra, bad, LATE_S * 1e3, late, max_lag * 1e3, (long)atomic_load(&R.closed));

    int rc = 0;
    if (o->json_out) {
        FILE *f = fopen(o->json_out, "w");
        if (!f) {
            fprintf(stderr, NAME ": --json-out %s: %s\n", o->json_out, strerror(errno));
            rc = 1;
        } else {
            fprintf(f, "{\n  \"offered_rate\": %.3f,\n  \"duration_s\": %.3f,\n", offered,
                    o->duration);
            fprintf(f, "  \"connections\": %ld,\n  \"requests\": %ld,\n  \"sent\": %ld,\n",
                    o->connections, R.n, R.n - nunsent);
            fprintf(f, "  \"status_200\": %ld,\n  \"status_429\": %ld,\n  \"status_503\": %ld,\n",
                    n200, n429, n503);
            fprintf(f, "  \"status_other\": %ld,\n  \"errors\": %ld,\n  \"not_sent\": %ld,\n",
                    nother, nerr, nunsent);
            fprintf(f, "  \"retry_after_missing\": %ld,\n  \"bad_body_200\": %ld,\n", no_ra, bad);
            fprintf(f, "  \"late_sends\": %ld,\n  \"max_send_lag_ms\": %.3f,\n", late,
                    max_lag * 1e3);
            fprintf(f, "  \"closed_connections\": %ld,\n  \"elapsed_s\": %.3f,\n",
                    (long)atomic_load(&R.closed), elapsed);
            fprintf(f, "  \"throughput_200_per_s\": %.3f,\n", thr);
            json_lat(f, "200", &s200, 0);
            json_lat(f, "429", &s429, 0);
            json_lat(f, "all", &sall, 1);
            fprintf(f, "}\n");
            if (fclose(f)) {
                fprintf(stderr, NAME ": --json-out %s: write failed\n", o->json_out);
                rc = 1;
            }
        }
    }
    free(l200);
    free(l429);
    free(lall);
    free(R.head);
    free(R.s);
    return rc;
}

/* --get URL: one GET, the body to stdout. */
static int get_once(opts *o) {
    struct sockaddr_storage sa;
    socklen_t sa_len;
    if (resolve(o, &sa, &sa_len)) return 1;
    size_t hl;
    char *head = make_head(o, &hl);
    if (!head) {
        fprintf(stderr, NAME ": out of memory\n");
        return 1;
    }
    conn c = {-1, 0, NULL, 0, 0};
    reply r;
    exchange(&c, &sa, sa_len, head, hl, o, 1, now_s() + o->timeout, &r);
    int rc = 1;
    if (r.err)
        fprintf(stderr, NAME ": GET http://%s:%s%s: %s\n", o->host, o->port, o->path,
                ERR_NAMES[r.err]);
    else {
        char *hend = memmem(c.buf, c.len, "\r\n\r\n", 4);
        size_t off = hend ? (size_t)(hend - c.buf) + 4 : c.len;
        fwrite(c.buf + off, 1, c.len - off, stdout);
        if (r.status != 200) fprintf(stderr, NAME ": GET %s: status %d\n", o->path, r.status);
        rc = r.status == 200 ? 0 : 1;
    }
    drop(&c);
    free(c.buf);
    free(head);
    return rc;
}

int main(int argc, char **argv) {
    opts o;
    memset(&o, 0, sizeof o);
    o.timeout = 30;
    o.connections = 16;
    const char *url = NULL, *get = NULL, *body_file = NULL, *body_json = NULL;
    int have_rate = 0, have_dur = 0, rc = 0;
    signal(SIGPIPE, SIG_IGN);
    for (int i = 1; i < argc && !rc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        double x;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            usage(stdout);
            return 0;
        }
        if (!v) {
            fprintf(stderr, NAME ": %s: unknown option, or no value after it\n", a);
            rc = 2;
            break;
        }
        i++;
        if (!strcmp(a, "--url")) url = v;
        else if (!strcmp(a, "--get")) get = v;
        else if (!strcmp(a, "--body")) body_file = v;
        else if (!strcmp(a, "--body-json")) body_json = v;
        else if (!strcmp(a, "--key")) o.key = v;
        else if (!strcmp(a, "--json-out")) o.json_out = v;
        else if (!strcmp(a, "--rate")) {
            rc = parse_num(a, v, 0.001, 100000, &o.rate) ? 2 : 0;
            have_rate = 1;
        } else if (!strcmp(a, "--duration")) {
            rc = parse_num(a, v, 0.001, 86400, &o.duration) ? 2 : 0;
            have_dur = 1;
        } else if (!strcmp(a, "--timeout")) {
            rc = parse_num(a, v, 0.001, 3600, &o.timeout) ? 2 : 0;
        } else if (!strcmp(a, "--connections")) {
            if (parse_num(a, v, 1, 1024, &x)) {
                rc = 2;
            } else if (x != floor(x)) {
                fprintf(stderr, NAME ": --connections: expected a whole number, got '%s'\n", v);
                rc = 2;
            } else {
                o.connections = (long)x;
            }
        } else {
            fprintf(stderr, NAME ": %s: unknown option\n", a);
            rc = 2;
        }
    }
    if (rc) {
        fprintf(stderr, "try '" NAME " --help'\n");
        return rc;
    }
    if (!!url + !!get != 1) {
        fprintf(stderr, NAME ": give exactly one of --url URL (a load run) or --get URL\n");
        return 2;
    }
    if (o.key && strpbrk(o.key, "\r\n")) {
        fprintf(stderr, NAME ": --key: no line breaks allowed\n");
        return 2;
    }
    if (parse_url(url ? url : get, &o)) return 2;
    if (get) return get_once(&o);
    if (!have_rate || !have_dur) {
        fprintf(stderr, NAME ": a load run needs --rate R and --duration S\n");
        return 2;
    }
    if (body_file && body_json) {
        fprintf(stderr, NAME ": give --body FILE or --body-json JSON, not both\n");
        return 2;
    }
    if (body_json) {
        o.body_len = strlen(body_json);
        if (!(o.body = malloc(o.body_len + 1))) {
            fprintf(stderr, NAME ": out of memory\n");
            return 1;
        }
        memcpy(o.body, body_json, o.body_len + 1);
    } else if (body_file && read_file(body_file, &o.body, &o.body_len)) {
        return 2;
    }
    rc = load(&o);
    free(o.body);
    return rc;
}
