/* libFuzzer: JSON bodies. (1) The realtime-lookup body parser accepts only an
 * object with a valid corp_id and mobile, and what it hands on passes the same
 * checks again. (2) Whatever bytes the JSON writer is given, it writes a string
 * json-c parses back, and valid UTF-8 without NUL comes back unchanged. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <json-c/json.h>

#include "common/buf.h"
#include "worker/api/api_shared.h"

static int valid_utf8_no_nul(const uint8_t *s, size_t n)
{
    for (size_t i = 0; i < n;) {
        uint8_t c = s[i];
        size_t k;
        uint32_t cp;
        if (c == 0)
            return 0;
        if (c < 0x80) {
            i++;
            continue;
        } else if ((c & 0xe0) == 0xc0) {
            k = 1, cp = c & 0x1f;
        } else if ((c & 0xf0) == 0xe0) {
            k = 2, cp = c & 0x0f;
        } else if ((c & 0xf8) == 0xf0) {
            k = 3, cp = c & 0x07;
        } else {
            return 0;
        }
        for (size_t j = 1; j <= k; j++) {
            if (i + j >= n || (s[i + j] & 0xc0) != 0x80)
                return 0;
            cp = (cp << 6) | (s[i + j] & 0x3f);
        }
        if ((k == 1 && cp < 0x80) || (k == 2 && cp < 0x800) || (k == 3 && cp < 0x10000) ||
            cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
            return 0;
        i += k + 1;
    }
    return 1;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char corp[72], mobile[24];
    const char *why = NULL;

    if (api_lookup_body_parse((const char *)data, size, corp, sizeof corp, mobile, sizeof mobile,
                              &why) == 0) {
        if (!corp_id_valid(corp) || !api_valid_mobile(mobile))
            abort();
    } else if (!why || !*why) {
        abort();
    }

    buf b;
    jw w;
    buf_init(&b);
    jw_init(&w, &b);
    jw_obj_begin(&w);
    jw_key(&w, "k");
    jw_strn(&w, (const char *)data, size);
    jw_obj_end(&w);
    if (b.oom)
        abort();
    json_object *o = json_tokener_parse(b.data);
    if (!o)
        abort(); /* the writer produced invalid JSON */
    json_object *v;
    if (!json_object_object_get_ex(o, "k", &v) || !json_object_is_type(v, json_type_string))
        abort();
    if (valid_utf8_no_nul(data, size) && ((size_t)json_object_get_string_len(v) != size ||
                                          memcmp(json_object_get_string(v), data, size) != 0))
        abort();
    json_object_put(o);
    buf_free(&b);
    return 0;
}
