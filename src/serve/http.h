/* http.h - the HTTP layer: libmicrohttpd connections in, whole requests out.
 *
 * One thread per connection (at most max_connections), so a handler may
 * block while its job is computed without holding up other clients. The
 * layer reads a request's body (refusing one over max_body with 413 before
 * reading it), hands the complete request to the handler and sends the
 * reply with a Content-Length (never chunked). A watchdog closes any
 * connection that has spent conn_timeout_s on one request without sending
 * it whole (slow or stalled clients), and idle keep-alive connections.
 *
 * Memory: every connection has a request context (the reply and its short
 * text) allocated at start; a request with a body takes one of body_buffers
 * buffers of max_body bytes, reserved at start and reused (none free: 503
 * at once, before the body is read). The handler's reply points at its text,
 * at a malloc'd buffer the layer frees, or at the caller's memory with a
 * release callback run once the reply is sent or dropped.
 */
#ifndef HSTU_SERVE_HTTP_H
#define HSTU_SERVE_HTTP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct http_request {
    const char *method, *path;
    const char *body;       /* not NUL-terminated */
    size_t body_len;
    void *conn;             /* for http_header */
} http_request;

#define HTTP_MAX_HEADERS 2
#define HTTP_TEXT_MAX 2560 /* an error's {"error": ...} fits */

/* Set only through the http_reply_* functions below. */
typedef struct http_reply {
    int status;
    const char *body;       /* text[], an owned malloc'd buffer, or borrowed */
    size_t len;
    bool owned;             /* body is malloc'd: the layer frees it */
    void (*release)(void *arg); /* borrowed body: called once sent or dropped */
    void *release_arg;
    const char *content_type;
    const char *header_name[HTTP_MAX_HEADERS];
    char header_value[HTTP_MAX_HEADERS][64];
    int n_headers;
    char text[HTTP_TEXT_MAX];
} http_reply;

typedef void (*http_handler)(void *ctx, const http_request *req, http_reply *rep);

typedef struct http_server_options {
    const char *host;       /* NULL: all addresses */
    int port;               /* 0: any free port */
    size_t max_body;
    int body_buffers;       /* requests with a body held at once */
    int max_connections;
    int64_t conn_timeout_s;
} http_server_options;

/* The body buffers, for /metrics. */
typedef struct http_pool_stats {
    int buffers, in_use, in_use_max;
    size_t buffer_bytes;
    uint64_t refused;       /* requests answered 503: no buffer free */
} http_pool_stats;

typedef struct http_server http_server;

/* Starts listening; NULL with msg on failure. */
http_server *http_server_start(const http_server_options *o, http_handler h, void *ctx, char *msg, size_t msg_size);
int http_server_port(const http_server *s);
/* Stops accepting new connections (existing ones go on). */
void http_server_quiesce(http_server *s);
/* Waits (up to timeout_ms) until no request is being handled or its reply
 * sent, so that stopping does not cut answers short. */
void http_server_drain(http_server *s, int64_t timeout_ms);
/* Closes every connection and joins their threads. */
void http_server_stop(http_server *s);
/* A request header's value, or NULL. */
const char *http_header(const http_request *req, const char *name);
void http_server_pool_stats(http_server *s, http_pool_stats *out);
/* Sets rep to a JSON error {"error": msg} (in rep->text, no allocation). */
void http_reply_error(http_reply *rep, int status, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
/* Sets rep's body to a copy of text (in rep->text when it fits). */
void http_reply_text(http_reply *rep, int status, const char *content_type, const char *text);
/* Sets rep's body to body[0, len), malloc'd: the layer frees it. */
void http_reply_take(http_reply *rep, int status, const char *content_type, char *body, size_t len);
/* Sets rep's body to the caller's body[0, len), which must stay valid until
 * release(arg) is called (once, when the reply was sent or dropped). */
void http_reply_borrow(http_reply *rep, int status, const char *content_type, const char *body, size_t len,
                       void (*release)(void *arg), void *arg);

#endif
