/* GET /: the web page. */
#include <stdlib.h>
#include <string.h>

#include "server_internal.h"

static const char PAGE[] = "<!doctype html><title>lorahost</title><p>lorahost</p>\n";

void lh__page(lh__reply *rep) {
    if (!(rep->body = malloc(sizeof PAGE))) {
        lh__reply_error(rep, 500, NULL, "out of memory");
        return;
    }
    memcpy(rep->body, PAGE, sizeof PAGE);
    rep->len = sizeof PAGE - 1;
    rep->status = 200;
    rep->ctype = "text/html; charset=utf-8";
}
