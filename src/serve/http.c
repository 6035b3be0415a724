/* http.c - the HTTP layer on libmicrohttpd.
 *
 * libmicrohttpd runs one thread per connection (MHD_USE_THREAD_PER_
 * CONNECTION) up to max_connections. The access callback is called once
 * when the headers are in (the body's Content-Length is checked against
 * max_body then: over it, 413 at once, the body unread), once per piece of
 * body (appended to the request's buffer, sized once from Content-Length),
 * and once at the end, when the handler runs and the reply is queued.
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
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

typedef struct conn_slot {
    bool used, busy, cut;
    int fd;
    uint64_t since_ns;      /* the current request began (or the last one ended) */
} conn_slot;

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
};

typedef struct req_ctx {
    char *body;
    size_t len, cap;
    bool too_big, replied;
} req_ctx;

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

void http_reply_text(http_reply *rep, int status, const char *content_type, const char *text)
{
    free(rep->body);
    rep->status = status;
    rep->len = strlen(text);
    rep->body = malloc(rep->len + 1);
    if (rep->body)
        memcpy(rep->body, text, rep->len + 1);
    else
        rep->len = 0;
    rep->content_type = content_type;
}

void http_reply_error(http_reply *rep, int status, const char *fmt, ...)
{
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    /* {"error": msg} with msg escaped by hand: no allocation can fail here
     * but the final one. */
    char out[2200];
    size_t p = 0;
    p += (size_t)snprintf(out, sizeof out, "{\"error\":\"");
    for (const char *s = msg; *s && p < sizeof out - 16; s++) {
        unsigned char ch = (unsigned char)*s;
        if (ch == '"' || ch == '\\')
            out[p++] = '\\', out[p++] = (char)ch;
        else if (ch < 0x20)
            p += (size_t)snprintf(out + p, sizeof out - p, "\\u%04x", ch);
        else
            out[p++] = (char)ch;
    }
    snprintf(out + p, sizeof out - p, "\"}");
    http_reply_text(rep, status, "application/json", out);
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

static enum MHD_Result send_reply(struct MHD_Connection *c, http_reply *rep)
{
    struct MHD_Response *r =
        MHD_create_response_from_buffer(rep->len, rep->body ? rep->body : (void *)"",
                                        rep->body ? MHD_RESPMEM_MUST_FREE : MHD_RESPMEM_PERSISTENT);
    if (!r) {
        free(rep->body);
        rep->body = NULL;
        return MHD_NO;
    }
    rep->body = NULL; /* the response owns it now */
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
    http_reply rep = {0};
    http_reply_error(&rep, status, "%s", msg);
    r->replied = true;
    return send_reply(c, &rep);
}

static enum MHD_Result on_access(void *cls, struct MHD_Connection *c, const char *url, const char *method,
                                 const char *version, const char *upload, size_t *upload_size, void **con_cls)
{
    http_server *s = cls;
    req_ctx *r = *con_cls;
    if (!r) {
        /* headers are in */
        r = calloc(1, sizeof *r);
        if (!r)
            return MHD_NO;
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
            if (n > 0) {
                r->body = malloc((size_t)n);
                if (!r->body)
                    return early_error(c, r, 503, "out of memory for a body of %llu bytes", n);
                r->cap = (size_t)n;
            }
        }
        return MHD_YES;
    }
    if (*upload_size) {
        size_t n = *upload_size;
        *upload_size = 0;
        if (r->replied || r->too_big)
            return MHD_YES;
        if (n > s->o.max_body - r->len) {
            r->too_big = true; /* answered 413 once the body is over */
            free(r->body);
            r->body = NULL;
            r->len = r->cap = 0;
            return MHD_YES;
        }
        if (r->len + n > r->cap) { /* no Content-Length (chunked): grow */
            size_t cap = r->cap ? r->cap : 4096;
            while (cap < r->len + n)
                cap *= 2;
            if (cap > s->o.max_body)
                cap = s->o.max_body;
            char *nb = realloc(r->body, cap);
            if (!nb) {
                r->too_big = true;
                return MHD_YES;
            }
            r->body = nb;
            r->cap = cap;
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
    http_request req = {.method = method, .path = url, .body = r->body ? r->body : "", .body_len = r->len, .conn = c};
    http_reply rep = {0};
    s->handler(s->ctx, &req, &rep);
    if (!rep.status)
        http_reply_error(&rep, 500, "no reply (a bug)");
    r->replied = true;
    return send_reply(c, &rep);
}

static void on_completed(void *cls, struct MHD_Connection *c, void **con_cls, enum MHD_RequestTerminationCode toe)
{
    http_server *s = cls;
    req_ctx *r = *con_cls;
    if (r) {
        free(r->body);
        free(r);
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
                s->slots[i] = (conn_slot){.used = true, .fd = ci ? ci->connect_fd : -1, .since_ns = now_ns()};
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
    if (!s->slots) {
        snprintf(msg, msg_size, "out of memory");
        goto fail;
    }
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
    free(s->slots);
    pthread_mutex_destroy(&s->mu);
    pthread_cond_destroy(&s->cv);
    free(s);
}
