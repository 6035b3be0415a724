/* http.h - the HTTP layer: libmicrohttpd connections in, whole requests out.
 *
 * One thread per connection (at most max_connections), so a handler may
 * block while its job is computed without holding up other clients. The
 * layer reads a request's body (refusing one over max_body with 413 before
 * reading it), hands the complete request to the handler and sends the
 * reply with a Content-Length (never chunked). A watchdog closes any
 * connection that has spent conn_timeout_s on one request without sending
 * it whole (slow or stalled clients), and idle keep-alive connections.
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

typedef struct http_reply {
    int status;
    char *body;             /* malloc'd; the layer frees it */
    size_t len;
    const char *content_type;
    const char *header_name[HTTP_MAX_HEADERS];
    char header_value[HTTP_MAX_HEADERS][64];
    int n_headers;
} http_reply;

typedef void (*http_handler)(void *ctx, const http_request *req, http_reply *rep);

typedef struct http_server_options {
    const char *host;       /* NULL: all addresses */
    int port;               /* 0: any free port */
    size_t max_body;
    int max_connections;
    int64_t conn_timeout_s;
} http_server_options;

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
/* Sets rep to a JSON error {"error": msg}. */
void http_reply_error(http_reply *rep, int status, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
/* Sets rep's body to text (copied) with a content type. */
void http_reply_text(http_reply *rep, int status, const char *content_type, const char *text);

#endif
