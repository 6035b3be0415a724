/* http_client.h - a small blocking HTTP/1.1 client over plain sockets.
 *
 * For the server's tests and `hstu loadgen`: one request at a time on a
 * keep-alive connection, bodies with Content-Length only (the server never
 * sends chunked replies). IPv4 loopback or any dotted address.
 */
#ifndef HSTU_SERVE_HTTP_CLIENT_H
#define HSTU_SERVE_HTTP_CLIENT_H

#include <stddef.h>

typedef struct hc_response {
    int status;
    char *body;               /* malloc'd, NUL-terminated; hc_response_free */
    size_t len;
    long long header_len;     /* Inference-Header-Content-Length, -1 if absent */
    int chunked;              /* a Transfer-Encoding: chunked reply was seen */
} hc_response;

/* Connects; returns the socket or -1. timeout_ms bounds each send/recv. */
int hc_connect(const char *host, int port, int timeout_ms);
/* Sends one request (extra_headers: "Name: value\r\n" lines or NULL) and
 * reads the reply. Returns 0, or -1 when the connection failed. */
int hc_request(int fd, const char *method, const char *path, const char *extra_headers, const void *body,
               size_t len, hc_response *out);
/* Connect, request, close. */
int hc_call(const char *host, int port, const char *method, const char *path, const char *extra_headers,
            const void *body, size_t len, hc_response *out);
void hc_response_free(hc_response *r);

#endif
