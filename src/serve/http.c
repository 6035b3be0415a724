/* http.c - the HTTP layer on libmicrohttpd.
 *
 * libmicrohttpd runs one thread per connection (MHD_USE_THREAD_PER_
 * CONNECTION) up to max_connections. The access callback is called once
 * when the headers are in (the body's Content-Length is checked against
 * max_body then: over it, 413 at once, the body unread; a body buffer is
 * taken from the pool: none free, 503 at once), once per piece of body
 * (copied into the buffer), and once at the end, when the handler runs and
 * the reply is queued.
 *
 * Memory (docs/serving.md, "Memory"): a connection's slot holds its request
 * context and reply, allocated with the slots at start; the body buffers
 * are one reservation of body_buffers x max_body bytes, made at start, each
 * resident only as far as bodies have filled it (past 1 MiB a buffer is
 * given back to the kernel when released). A chunked body without
 * Content-Length takes its buffer with its first piece.
 *
 * The watchdog: libmicrohttpd's connection timeout is an inactivity timer,
 * so a client sending one byte a second would hold its connection forever.
 * Every connection has a slot with the time its current request began; a
 * thread closes (shutdown(2)) any connection whose request is not complete
 * conn_timeout_s after it began. A request being answered is never cut.
 */
#include "serve/http.h"

#include <microhttpd.h>

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

/* One request of a connection, from its headers to its completion. */
typedef struct req_ctx {
    int buf;                /* body buffer index, -1: none */
    char *body;
    size_t len;
    bool too_big, refused, replied;
    http_reply rep;
} req_ctx;

typedef struct conn_slot {
    bool used, busy, cut;
    int fd;
    uint64_t since_ns;      /* the current request began (or the last one ended) */
    req_ctx req;
} conn_slot;

/* A buffer that held more than this is given back to the kernel (madvise)
 * past it when released, so resident memory follows the bodies in flight. */
#define BODY_KEEP_RESIDENT ((size_t)1 << 20)

struct http_server {
    struct MHD_Daemon *d;
    http_handler handler;
    void *ctx;
    http_server_options o;
    int port;
    int listen_fd;          /* after quiesce, ours to close */
    pthread_mutex_t mu;
    pthread_cond_t cv;
    conn_slot *slots;       /* [max_connections] */
    bool stop;
    pthread_t watchdog;
    /* body buffers */
    char *pool;             /* [body_buffers][buf_bytes], mmap'd */
    size_t pool_bytes, buf_bytes;
    int *pool_free;         /* stack of free indices */
    int n_free, in_use_max;
    uint64_t refused;
};

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* Drops what rep held (an owned body) before it is set again. */
static void reply_clear(http_reply *rep)
{
    if (rep->owned)
        free((char *)rep->body);
    if (rep->release)
        rep->release(rep->release_arg); /* dropped */
    rep->owned = false;
    rep->release = NULL;
    rep->body = NULL;
    rep->len = 0;
}

void http_reply_text(http_reply *rep, int status, const char *content_type, const char *text)
{
    reply_clear(rep);
    size_t n = strlen(text);
    rep->status = status;
    rep->content_type = content_type;
    if (n < sizeof rep->text) {
        memcpy(rep->text, text, n + 1);
        rep->body = rep->text;
        rep->len = n;
        return;
    }
    char *p = malloc(n + 1); /* only metadata-sized text gets here, never the infer path */
    if (!p) {
        http_reply_error(rep, 503, "out of memory for a reply of %zu bytes", n);
        return;
    }
    memcpy(p, text, n + 1);
    http_reply_take(rep, status, content_type, p, n);
}

void http_reply_take(http_reply *rep, int status, const char *content_type, char *body, size_t len)
{
    reply_clear(rep);
    rep->status = status;
    rep->content_type = content_type;
    rep->body = body;
    rep->len = len;
    rep->owned = true;
}

void http_reply_borrow(http_reply *rep, int status, const char *content_type, const char *body, size_t len,
                       void (*release)(void *arg), void *arg)
{
    reply_clear(rep);
    rep->status = status;
    rep->content_type = content_type;
    rep->body = body;
    rep->len = len;
    rep->release = release;
    rep->release_arg = arg;
}

void http_reply_error(http_reply *rep, int status, const char *fmt, ...)
{
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    /* {"error": msg} with msg escaped by hand, straight into rep->text:
     * 1023 bytes of message escape to at most 6138, cut to fit. */
    reply_clear(rep);
    char *out = rep->text;
    size_t cap = sizeof rep->text, p = 0;
    p += (size_t)snprintf(out, cap, "{\"error\":\"");
    for (const char *s = msg; *s && p < cap - 16; s++) {
        unsigned char ch = (unsigned char)*s;
        if (ch == '"' || ch == '\\')
            out[p++] = '\\', out[p++] = (char)ch;
        else if (ch < 0x20)
            p += (size_t)snprintf(out + p, cap - p, "\\u%04x", ch);
        else
            out[p++] = (char)ch;
    }
    p += (size_t)snprintf(out + p, cap - p, "\"}");
    rep->status = status;
    rep->content_type = "application/json";
    rep->body = out;
    rep->len = p;
}

const char *http_header(const http_request *req, const char *name)
{
    return MHD_lookup_connection_value((struct MHD_Connection *)req->conn, MHD_HEADER_KIND, name);
}

static conn_slot *slot_of(struct MHD_Connection *c)
{
    const union MHD_ConnectionInfo *ci = MHD_get_connection_info(c, MHD_CONNECTION_INFO_SOCKET_CONTEXT);
    return ci ? ci->socket_context : NULL;
}

/* ---- body buffers ------------------------------------------------------ */

static int pool_get(http_server *s)
{
    int i = -1;
    pthread_mutex_lock(&s->mu);
    if (s->n_free > 0) {
        i = s->pool_free[--s->n_free];
        int in_use = s->o.body_buffers - s->n_free;
        if (in_use > s->in_use_max)
            s->in_use_max = in_use;
    } else {
        s->refused++;
    }
    pthread_mutex_unlock(&s->mu);
    return i;
}

static void pool_put(http_server *s, int i, size_t used)
{
    if (used > BODY_KEEP_RESIDENT) {
        size_t page = (size_t)sysconf(_SC_PAGESIZE);
        size_t end = (used + page - 1) / page * page;
        madvise(s->pool + (size_t)i * s->buf_bytes + BODY_KEEP_RESIDENT, end - BODY_KEEP_RESIDENT, MADV_DONTNEED);
    }
    pthread_mutex_lock(&s->mu);
    s->pool_free[s->n_free++] = i;
    pthread_mutex_unlock(&s->mu);
}

void http_server_pool_stats(http_server *s, http_pool_stats *out)
{
    pthread_mutex_lock(&s->mu);
    out->buffers = s->o.body_buffers;
    out->in_use = s->o.body_buffers - s->n_free;
    out->in_use_max = s->in_use_max;
    out->buffer_bytes = s->buf_bytes;
    out->refused = s->refused;
    pthread_mutex_unlock(&s->mu);
}

static bool take_buffer(http_server *s, req_ctx *r)
{
    r->buf = pool_get(s);
    if (r->buf < 0)
        return false;
    r->body = s->pool + (size_t)r->buf * s->buf_bytes;
    return true;
}

/* ---- requests --------------------------------------------------------------- */

static void free_body(void *p) { free(p); }

/* Queues rep; what it held passes to libmicrohttpd (freed or released when
 * the response is destroyed, after it was sent or the connection died). */
static enum MHD_Result send_reply(struct MHD_Connection *c, http_reply *rep)
{
    struct MHD_Response *r;
    void (*release)(void *) = rep->release;
    void *arg = rep->release_arg;
    if (rep->owned) {
        release = free_body;
        arg = (void *)rep->body;
    }
    if (release)
        r = MHD_create_response_from_buffer_with_free_callback_cls(rep->len, (void *)rep->body, release, arg);
    else
        r = MHD_create_response_from_buffer(rep->len, (void *)(rep->body ? rep->body : ""),
                                            MHD_RESPMEM_PERSISTENT);
    rep->owned = false;
    rep->release = NULL;
    if (!r) {
        if (release)
            release(arg);
        return MHD_NO;
    }
    if (rep->content_type)
        MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, rep->content_type);
    for (int i = 0; i < rep->n_headers; i++)
        MHD_add_response_header(r, rep->header_name[i], rep->header_value[i]);
    enum MHD_Result ret = MHD_queue_response(c, (unsigned)rep->status, r);
    MHD_destroy_response(r);
    return ret;
}

static enum MHD_Result early_error(struct MHD_Connection *c, req_ctx *r, int status, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static enum MHD_Result early_error(struct MHD_Connection *c, req_ctx *r, int status, const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    http_reply_error(&r->rep, status, "%s", msg);
    r->replied = true;
    return send_reply(c, &r->rep);
}

static void req_reset(req_ctx *r)
{
    r->buf = -1;
    r->body = NULL;
    r->len = 0;
    r->too_big = r->refused = r->replied = false;
    r->rep.status = 0;
    r->rep.body = NULL;
    r->rep.len = 0;
    r->rep.owned = false;
    r->rep.release = NULL;
    r->rep.content_type = NULL;
    r->rep.n_headers = 0;
}

static enum MHD_Result on_access(void *cls, struct MHD_Connection *c, const char *url, const char *method,
                                 const char *version, const char *upload, size_t *upload_size, void **con_cls)
{
    http_server *s = cls;
    req_ctx *r = *con_cls;
    if (!r) {
        /* headers are in */
        conn_slot *slot = slot_of(c);
        if (!slot)
            return MHD_NO; /* every connection has a slot (the limits are equal): a bug */
        r = &slot->req;
        req_reset(r);
        *con_cls = r;
        const char *cl = MHD_lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_LENGTH);
        if (cl) {
            char *end;
            errno = 0;
            unsigned long long n = strtoull(cl, &end, 10);
            if (errno || *end || end == cl)
                return early_error(c, r, 400, "Content-Length \"%s\" is not a number", cl);
            if (n > s->o.max_body)
                return early_error(c, r, 413, "body of %llu bytes is over the limit of %zu bytes", n, s->o.max_body);
            if (n > 0 && !take_buffer(s, r))
                return early_error(c, r, 503, "the server is busy: all %d request buffers are in use "
                                              "(--body-buffers); try again later", s->o.body_buffers);
        }
        return MHD_YES;
    }
    if (*upload_size) {
        size_t n = *upload_size;
        *upload_size = 0;
        if (r->replied || r->too_big || r->refused)
            return MHD_YES;
        if (r->buf < 0 && !take_buffer(s, r)) { /* chunked: the first piece */
            r->refused = true;
            return MHD_YES;
        }
        if (n > s->o.max_body - r->len) {
            r->too_big = true; /* answered 413 once the body is over */
            return MHD_YES;
        }
        memcpy(r->body + r->len, upload, n);
        r->len += n;
        return MHD_YES;
    }
    if (r->replied)
        return MHD_YES;
    /* the request is whole */
    conn_slot *slot = slot_of(c);
    if (slot) {
        pthread_mutex_lock(&s->mu);
        slot->busy = true;
        pthread_mutex_unlock(&s->mu);
    }
    if (r->too_big)
        return early_error(c, r, 413, "body over the limit of %zu bytes", s->o.max_body);
    if (r->refused)
        return early_error(c, r, 503, "the server is busy: all %d request buffers are in use (--body-buffers); "
                                      "try again later", s->o.body_buffers);
    http_request req = {.method = method, .path = url, .body = r->body ? r->body : "", .body_len = r->len, .conn = c};
    s->handler(s->ctx, &req, &r->rep);
    if (!r->rep.status)
        http_reply_error(&r->rep, 500, "no reply (a bug)");
    r->replied = true;
    return send_reply(c, &r->rep);
}

static void on_completed(void *cls, struct MHD_Connection *c, void **con_cls, enum MHD_RequestTerminationCode toe)
{
    http_server *s = cls;
    req_ctx *r = *con_cls;
    if (r) {
        reply_clear(&r->rep); /* a reply never queued (the connection died first) */
        if (r->buf >= 0)
            pool_put(s, r->buf, r->len);
        r->buf = -1;
        *con_cls = NULL;
    }
    conn_slot *slot = slot_of(c);
    if (slot) {
        pthread_mutex_lock(&s->mu);
        slot->busy = false;
        slot->since_ns = now_ns();
        pthread_mutex_unlock(&s->mu);
    }
}

static void on_connection(void *cls, struct MHD_Connection *c, void **socket_context,
                          enum MHD_ConnectionNotificationCode toe)
{
    http_server *s = cls;
    pthread_mutex_lock(&s->mu);
    if (toe == MHD_CONNECTION_NOTIFY_STARTED) {
        const union MHD_ConnectionInfo *ci = MHD_get_connection_info(c, MHD_CONNECTION_INFO_CONNECTION_FD);
        for (int i = 0; i < s->o.max_connections; i++)
            if (!s->slots[i].used) {
                conn_slot *sl = &s->slots[i];
                sl->used = true;
                sl->busy = sl->cut = false;
                sl->fd = ci ? ci->connect_fd : -1;
                sl->since_ns = now_ns();
                sl->req.buf = -1;
                *socket_context = &s->slots[i];
                break;
            }
    } else if (*socket_context) {
        ((conn_slot *)*socket_context)->used = false;
        *socket_context = NULL;
    }
    pthread_mutex_unlock(&s->mu);
}

static void *watchdog_main(void *arg)
{
    http_server *s = arg;
    uint64_t limit = (uint64_t)s->o.conn_timeout_s * 1000000000ull;
    pthread_mutex_lock(&s->mu);
    while (!s->stop) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_nsec += 200 * 1000000L; /* 0.2 s: the timeout's resolution */
        if (ts.tv_nsec >= 1000000000L)
            ts.tv_sec++, ts.tv_nsec -= 1000000000L;
        pthread_cond_timedwait(&s->cv, &s->mu, &ts);
        uint64_t now = now_ns();
        for (int i = 0; i < s->o.max_connections; i++) {
            conn_slot *c = &s->slots[i];
            if (c->used && !c->busy && !c->cut && c->fd >= 0 && now - c->since_ns > limit) {
                shutdown(c->fd, SHUT_RDWR); /* its thread sees the end and closes it */
                c->cut = true;
            }
        }
    }
    pthread_mutex_unlock(&s->mu);
    return NULL;
}

http_server *http_server_start(const http_server_options *o, http_handler h, void *ctx, char *msg, size_t msg_size)
{
    http_server *s = calloc(1, sizeof *s);
    if (!s) {
        snprintf(msg, msg_size, "out of memory");
        return NULL;
    }
    s->o = *o;
    s->handler = h;
    s->ctx = ctx;
    s->listen_fd = -1;
    pthread_mutex_init(&s->mu, NULL);
    pthread_cond_init(&s->cv, NULL);
    s->slots = calloc((size_t)o->max_connections, sizeof *s->slots);
    s->pool_free = calloc((size_t)(o->body_buffers > 0 ? o->body_buffers : 1), sizeof *s->pool_free);
    if (!s->slots || !s->pool_free || o->body_buffers < 1 || o->max_body < 1) {
        snprintf(msg, msg_size, "out of memory for %d connection slots", o->max_connections);
        goto fail;
    }
    for (int i = 0; i < o->max_connections; i++)
        s->slots[i].req.buf = -1;
    /* Address space only: pages become resident as bodies fill them. */
    size_t page = (size_t)sysconf(_SC_PAGESIZE);
    s->buf_bytes = (o->max_body + page - 1) / page * page;
    if (s->buf_bytes > SIZE_MAX / (size_t)o->body_buffers) {
        snprintf(msg, msg_size, "%d body buffers of %zu bytes overflow the address space", o->body_buffers,
                 o->max_body);
        goto fail;
    }
    s->pool_bytes = s->buf_bytes * (size_t)o->body_buffers;
    void *pool = mmap(NULL, s->pool_bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (pool == MAP_FAILED) {
        snprintf(msg, msg_size, "cannot reserve %d body buffers of %zu MiB (%s): lower --body-buffers or --max-body-mb",
                 o->body_buffers, s->buf_bytes >> 20, strerror(errno));
        goto fail;
    }
    s->pool = pool;
    for (int i = o->body_buffers - 1; i >= 0; i--)
        s->pool_free[s->n_free++] = i;
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons((uint16_t)o->port)};
    if (inet_pton(AF_INET, o->host ? o->host : "0.0.0.0", &addr.sin_addr) != 1) {
        snprintf(msg, msg_size, "\"%s\" is not an IPv4 address", o->host);
        goto fail;
    }
    unsigned flags = MHD_USE_THREAD_PER_CONNECTION | MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_POLL | MHD_USE_ITC;
    s->d = MHD_start_daemon(flags, (uint16_t)o->port, NULL, NULL, on_access, s, MHD_OPTION_SOCK_ADDR, &addr,
                            MHD_OPTION_CONNECTION_LIMIT, (unsigned)o->max_connections,
                            MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)o->conn_timeout_s,
                            MHD_OPTION_NOTIFY_COMPLETED, on_completed, s, MHD_OPTION_NOTIFY_CONNECTION,
                            on_connection, s, MHD_OPTION_END);
    if (!s->d) {
        snprintf(msg, msg_size, "cannot listen on %s:%d (in use?)", o->host ? o->host : "0.0.0.0", o->port);
        goto fail;
    }
    const union MHD_DaemonInfo *di = MHD_get_daemon_info(s->d, MHD_DAEMON_INFO_BIND_PORT);
    s->port = di ? di->port : o->port;
    if (pthread_create(&s->watchdog, NULL, watchdog_main, s) != 0) {
        MHD_stop_daemon(s->d);
        snprintf(msg, msg_size, "cannot start the watchdog thread");
        goto fail;
    }
    return s;
fail:
    if (s->pool)
        munmap(s->pool, s->pool_bytes);
    free(s->pool_free);
    free(s->slots);
    pthread_mutex_destroy(&s->mu);
    pthread_cond_destroy(&s->cv);
    free(s);
    return NULL;
}

int http_server_port(const http_server *s) { return s->port; }

void http_server_quiesce(http_server *s)
{
    if (s && s->listen_fd < 0) {
        MHD_socket fd = MHD_quiesce_daemon(s->d);
        s->listen_fd = fd == MHD_INVALID_SOCKET ? -1 : (int)fd;
    }
}

void http_server_drain(http_server *s, int64_t timeout_ms)
{
    if (!s)
        return;
    for (int64_t waited = 0; waited < timeout_ms; waited += 5) {
        bool busy = false;
        pthread_mutex_lock(&s->mu);
        for (int i = 0; i < s->o.max_connections && !busy; i++)
            busy = s->slots[i].used && s->slots[i].busy;
        pthread_mutex_unlock(&s->mu);
        if (!busy)
            return;
        usleep(5000);
    }
}

void http_server_stop(http_server *s)
{
    if (!s)
        return;
    MHD_stop_daemon(s->d);
    if (s->listen_fd >= 0)
        close(s->listen_fd);
    pthread_mutex_lock(&s->mu);
    s->stop = true;
    pthread_cond_broadcast(&s->cv);
    pthread_mutex_unlock(&s->mu);
    pthread_join(s->watchdog, NULL);
    munmap(s->pool, s->pool_bytes);
    free(s->pool_free);
    free(s->slots);
    pthread_mutex_destroy(&s->mu);
    pthread_cond_destroy(&s->cv);
    free(s);
}
