/* http_client.c - a small blocking HTTP/1.1 client (tests, loadgen).
 *
 * Reads the status line and headers into a buffer, then exactly
 * Content-Length body bytes. Enough for this server; not a general client.
 */
#include "serve/http_client.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

int hc_connect(const char *host, int port, int timeout_ms)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0)
        return -1;
    struct timeval tv = {.tv_sec = timeout_ms / 1000, .tv_usec = (timeout_ms % 1000) * 1000};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((unsigned short)port)};
    if (inet_pton(AF_INET, host, &a.sin_addr) != 1 || connect(fd, (struct sockaddr *)&a, sizeof a) != 0) {
        close(fd);
        return -1;
    }
    return fd;
}

static int send_all(int fd, const void *p, size_t n)
{
    const char *c = p;
    while (n > 0) {
        ssize_t k = send(fd, c, n, MSG_NOSIGNAL);
        if (k < 0 && errno == EINTR)
            continue;
        if (k <= 0)
            return -1;
        c += k;
        n -= (size_t)k;
    }
    return 0;
}

void hc_response_free(hc_response *r)
{
    if (r) {
        free(r->body);
        r->body = NULL;
    }
}

int hc_request(int fd, const char *method, const char *path, const char *extra_headers, const void *body,
               size_t len, hc_response *out)
{
    memset(out, 0, sizeof *out);
    out->header_len = -1;
    char head[2048];
    int hn = snprintf(head, sizeof head, "%s %s HTTP/1.1\r\nHost: localhost\r\nContent-Length: %zu\r\n%s\r\n", method,
                      path, len, extra_headers ? extra_headers : "");
    if (hn <= 0 || (size_t)hn >= sizeof head || send_all(fd, head, (size_t)hn) != 0 ||
        (len && send_all(fd, body, len) != 0))
        return -1;
    /* headers */
    size_t cap = 4096, n = 0;
    char *buf = malloc(cap);
    if (!buf)
        return -1;
    char *end = NULL;
    while (!end) {
        if (n + 1 >= cap) {
            if (cap > (1u << 20))
                goto fail;
            char *nb = realloc(buf, cap * 2);
            if (!nb)
                goto fail;
            buf = nb;
            cap *= 2;
        }
        ssize_t k = recv(fd, buf + n, cap - n - 1, 0);
        if (k < 0 && errno == EINTR)
            continue;
        if (k <= 0)
            goto fail;
        n += (size_t)k;
        buf[n] = 0;
        end = strstr(buf, "\r\n\r\n");
    }
    if (sscanf(buf, "HTTP/1.%*d %d", &out->status) != 1)
        goto fail;
    size_t clen = 0;
    for (char *line = strstr(buf, "\r\n") + 2; line < end; line = strstr(line, "\r\n") + 2) {
        if (!strncasecmp(line, "Content-Length:", 15))
            clen = (size_t)strtoull(line + 15, NULL, 10);
        else if (!strncasecmp(line, "Inference-Header-Content-Length:", 32))
            out->header_len = strtoll(line + 32, NULL, 10);
        else if (!strncasecmp(line, "Transfer-Encoding:", 18) && strstr(line, "chunked"))
            out->chunked = 1;
    }
    size_t have = n - (size_t)(end + 4 - buf);
    out->body = malloc(clen + 1);
    if (!out->body)
        goto fail;
    memcpy(out->body, end + 4, have < clen ? have : clen);
    while (have < clen) {
        ssize_t k = recv(fd, out->body + have, clen - have, 0);
        if (k < 0 && errno == EINTR)
            continue;
        if (k <= 0)
            goto fail;
        have += (size_t)k;
    }
    out->body[clen] = 0;
    out->len = clen;
    free(buf);
    return 0;
fail:
    free(buf);
    hc_response_free(out);
    return -1;
}

int hc_call(const char *host, int port, const char *method, const char *path, const char *extra_headers,
            const void *body, size_t len, hc_response *out)
{
    int fd = hc_connect(host, port, 30000);
    if (fd < 0) {
        memset(out, 0, sizeof *out);
        return -1;
    }
    int rc = hc_request(fd, method, path, extra_headers, body, len, out);
    close(fd);
    return rc;
}
