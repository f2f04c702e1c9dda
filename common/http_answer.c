/* The bytes of an HTTP answer (http_answer.h). */
#include "common/http_answer.h"

#include <errno.h>
#include <fcntl.h>
#include <http_parser.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

struct http_answer {
    int refs;
    int status;
    char *ctype;
    char *bytes; /* head_len + body_len: mapped from fd, or malloc'ed when fd < 0 */
    size_t head_len, body_len;
    int fd;
    int pipe; /* read end of a pipe holding the whole block (from fd), or -1 */
};

static const char *reason(int status)
{
    const char *r = http_status_str((enum http_status)status);
    return (r && strcmp(r, "<unknown>") != 0) ? r : "Unknown";
}

size_t http_head(char *out, size_t cap, int status, const char *content_type, size_t body_len,
                 const char *xh, size_t xh_len, int keep_alive, int http10)
{
    const char *conn_hdr = !keep_alive ? "Connection: close\r\n"
                           : http10    ? "Connection: keep-alive\r\n"
                                       : "";
    if (!content_type)
        content_type = "application/octet-stream";
    int n = snprintf(out, cap, "HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %zu\r\n%s",
                     status, reason(status), content_type, body_len, conn_hdr);
    if (n < 0 || (size_t)n + xh_len + 2 > cap)
        return 0;
    size_t off = (size_t)n;
    if (xh_len) {
        memcpy(out + off, xh, xh_len);
        off += xh_len;
    }
    out[off++] = '\r';
    out[off++] = '\n';
    return off;
}

/* The block in a memfd, mapped read-only; -1 (errno set) if the kernel refuses
 * (no memfd, no descriptor left), and the caller uses the heap instead. */
static int map_file(http_answer *a, const char *head, const char *body)
{
    size_t total = a->head_len + a->body_len;
    int fd = memfd_create("orgsync-answer", MFD_CLOEXEC);
    if (fd < 0)
        return -1;
    if (ftruncate(fd, (off_t)total) == 0) {
        char *p = mmap(NULL, total, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
        if (p != MAP_FAILED) {
            memcpy(p, head, a->head_len);
            memcpy(p + a->head_len, body, a->body_len);
            if (mprotect(p, total, PROT_READ) == 0) {
                a->bytes = p;
                a->fd = fd;
                return 0;
            }
            munmap(p, total);
        }
    }
    close(fd);
    return -1;
}

/* The block of a file answer also in a pipe, which tee(2) duplicates by page
 * reference for each request: no lookup of the memfd's pages per request, as
 * sendfile does. Without it (the pipe's size refused, e.g. past the user's pipe
 * pages) the answer is sent with sendfile. */
static void fill_pipe(http_answer *a)
{
    size_t total = a->head_len + a->body_len;
    int p[2];
    loff_t off = 0;
    if (total > HTTP_ANSWER_PIPE_MAX || pipe2(p, O_CLOEXEC | O_NONBLOCK))
        return;
    int cap = fcntl(p[1], F_SETPIPE_SZ, (int)total);
    if (cap < 0 || (size_t)cap < total)
        goto fail;
    while ((size_t)off < total) {
        ssize_t n = splice(a->fd, &off, p[1], NULL, total - (size_t)off, SPLICE_F_NONBLOCK);
        if (n <= 0)
            goto fail;
    }
    close(p[1]);
    a->pipe = p[0];
    return;
fail:
    close(p[0]);
    close(p[1]);
}

http_answer *http_answer_new(int status, const char *content_type, const char *body, size_t len)
{
    char head[HTTP_HEAD_MAX(256, 0)];
    if (!content_type)
        content_type = "application/octet-stream";
    if (strlen(content_type) > 256)
        return NULL;
    http_answer *a = calloc(1, sizeof(*a));
    if (!a)
        return NULL;
    a->refs = 1;
    a->status = status;
    a->fd = -1;
    a->pipe = -1;
    if (!body)
        len = 0;
    a->body_len = len;
    a->head_len = http_head(head, sizeof head, status, content_type, len, NULL, 0, 1, 0);
    a->ctype = strdup(content_type);
    if (!a->head_len || !a->ctype)
        goto fail;
    if (len < HTTP_ANSWER_FILE_MIN || map_file(a, head, body) != 0) {
        a->bytes = malloc(a->head_len + len);
        if (!a->bytes)
            goto fail;
        memcpy(a->bytes, head, a->head_len);
        if (len)
            memcpy(a->bytes + a->head_len, body, len);
    } else {
        fill_pipe(a);
    }
    return a;
fail:
    free(a->ctype);
    free(a);
    return NULL;
}

http_answer *http_answer_ref(http_answer *a)
{
    a->refs++;
    return a;
}

void http_answer_unref(http_answer *a)
{
    if (!a || --a->refs > 0)
        return;
    if (a->fd >= 0) {
        munmap(a->bytes, a->head_len + a->body_len);
        close(a->fd);
        if (a->pipe >= 0)
            close(a->pipe);
    } else {
        free(a->bytes);
    }
    free(a->ctype);
    free(a);
}

int http_answer_status(const http_answer *a)
{
    return a->status;
}

const char *http_answer_content_type(const http_answer *a)
{
    return a->ctype;
}

const char *http_answer_bytes(const http_answer *a, size_t *len)
{
    *len = a->head_len + a->body_len;
    return a->bytes;
}

size_t http_answer_head_len(const http_answer *a)
{
    return a->head_len;
}

size_t http_answer_body_len(const http_answer *a)
{
    return a->body_len;
}

int http_answer_fd(const http_answer *a)
{
    return a->fd;
}

int http_answer_pipe(const http_answer *a)
{
    return a->pipe;
}
