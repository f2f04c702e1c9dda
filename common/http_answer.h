/* The bytes of an HTTP answer: the head for a status, type and length
 * (http_head), and answers built once and sent by reference to many requests
 * (http_answer: a cached answer).
 *
 *   http_answer *a = http_answer_new(200, "application/json", body, len);
 *   http_reply_answer(req1, a);   // common/http_server.h: no copy of the body
 *   http_reply_answer(req2, a);
 *   http_answer_unref(a);         // freed once the last write of it is done
 *
 * An answer is immutable and refcounted: the server holds a reference while a
 * write of it is under way, so the owner may drop it at any time. Status line,
 * headers (for a keep-alive HTTP/1.1 request without extra headers) and body are
 * one block. A large one lives in a memfd mapped read-only, which the server
 * sends with sendfile(2): the kernel then takes the page references instead of
 * copying the bytes into the socket (what nginx does with a static file). Up to
 * HTTP_ANSWER_PIPE_MAX it is also held in a pipe, whose pages tee(2) references
 * for each request without looking them up in the memfd again (less CPU per
 * request than sendfile: tests/bench/README.md, HTTP API). */
#ifndef ORGSYNC_HTTP_ANSWER_H
#define ORGSYNC_HTTP_ANSWER_H

#include <stddef.h>

typedef struct http_answer http_answer;

/* Answers from this body size on live in a memfd (sendfile); smaller ones on the
 * heap, where one write costs less than setting up a file. */
#define HTTP_ANSWER_FILE_MIN (16 * 1024)

/* An answer with a copy of body (content_type NULL: application/octet-stream),
 * with one reference; NULL when out of memory. */
http_answer *http_answer_new(int status, const char *content_type, const char *body, size_t len);
http_answer *http_answer_ref(http_answer *a);
/* Drops a reference; the last frees it. NULL is a no-op. */
void http_answer_unref(http_answer *a);

int http_answer_status(const http_answer *a);
const char *http_answer_content_type(const http_answer *a);
/* The whole block (head for keep-alive HTTP/1.1, then body) and its length. */
const char *http_answer_bytes(const http_answer *a, size_t *len);
/* Where the body starts in the block, and its length. */
size_t http_answer_head_len(const http_answer *a);
size_t http_answer_body_len(const http_answer *a);
/* The memfd holding the block (same bytes at the same offsets), or -1. */
int http_answer_fd(const http_answer *a);
/* The read end of a pipe holding the whole block of a file answer, to be
 * duplicated with tee(2) and never read; -1 if there is none. */
int http_answer_pipe(const http_answer *a);
/* File answers up to this size also get the pipe (the kernel's default cap on
 * a pipe's size, /proc/sys/fs/pipe-max-size, is 1 MiB). */
#define HTTP_ANSWER_PIPE_MAX (1024 * 1024)

/* Writes the head of an answer into out: status line, Content-Type, Content-Length
 * (body_len), "Connection: close" when !keep_alive ("keep-alive" for an HTTP/1.0
 * client that keeps it), the extra header lines xh ("Name: value\r\n"..., may be
 * NULL), and the blank line. Returns its length, or 0 if it does not fit in cap. */
size_t http_head(char *out, size_t cap, int status, const char *content_type, size_t body_len,
                 const char *xh, size_t xh_len, int keep_alive, int http10);
/* An upper bound of http_head's length for these lengths of type and extras. */
#define HTTP_HEAD_MAX(ctype_len, xh_len) (160 + (ctype_len) + (xh_len))

#endif
