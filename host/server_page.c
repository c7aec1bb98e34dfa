/* GET / and /index.html: the web page (host/web/index.html), whose bytes
 * the build embeds as lh__page_html (host/web/embed.cmake). */
#include <stdlib.h>
#include <string.h>

#include "server_internal.h"

/* web_page.c in the build directory, generated from host/web/index.html */
extern const unsigned char lh__page_html[];
extern const size_t lh__page_html_len;

void lh__page(lh__reply *rep) {
    if (!(rep->body = malloc(lh__page_html_len + 1))) {
        lh__reply_error(rep, 500, NULL, "out of memory");
        return;
    }
    memcpy(rep->body, lh__page_html, lh__page_html_len + 1);
    rep->len = lh__page_html_len;
    rep->status = 200;
    rep->ctype = "text/html; charset=utf-8";
}
