/* GET /: the progress page. Static (compiled in); its script polls this
 * worker's own /v1/runs/latest and /v1/leader (every second), /v1/runs and
 * /v1/candidates (every 3 s), draws its chart as inline SVG, and fetches nothing
 * from anywhere else, which the Content-Security-Policy enforces. */
#include "worker/api/page.h"

static void on_page(http_req *req, void *arg)
{
    (void)arg;
    http_req_add_header(req, "Cache-Control", "no-cache");
    http_req_add_header(req, "X-Content-Type-Options", "nosniff");
    http_req_add_header(
        req, "Content-Security-Policy",
        "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
        "connect-src 'self'");
    http_reply(req, 200, "text/html; charset=utf-8", page_index_html, page_index_html_len);
}

int page_register(http_server *srv)
{
    return http_server_route(srv, "GET", "/", on_page, NULL);
}
