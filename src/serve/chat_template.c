/* chat_template.c - the default chat template (serve.h): DeepSeek-V3's conversation format,
 * written out by hand rather than through a Jinja engine. The special tokens are written as
 * text; the tokenizer (parsing special tokens) turns them into their ids. */
#include <stdlib.h>
#include <string.h>

#include "serve/serve_internal.h"

#define DS_BOS "<\xEF\xBD\x9C" "begin\xE2\x96\x81of\xE2\x96\x81sentence\xEF\xBD\x9C>"
#define DS_EOS "<\xEF\xBD\x9C" "end\xE2\x96\x81of\xE2\x96\x81sentence\xEF\xBD\x9C>"
#define DS_USER "<\xEF\xBD\x9CUser\xEF\xBD\x9C>"
#define DS_ASSISTANT "<\xEF\xBD\x9C" "Assistant\xEF\xBD\x9C>"

char *ts_chat_template_deepseek(void *user, const ts_chat_message *msgs, size_t n) {
    sbuf out = {0};
    bool ok = sbuf_append(&out, DS_BOS, strlen(DS_BOS));
    bool first_system = true;
    for (size_t i = 0; ok && i < n; i++) { /* system messages go first, joined by blank lines */
        if (strcmp(msgs[i].role, "system") != 0) continue;
        if (!first_system) ok = sbuf_append(&out, "\n\n", 2);
        ok = ok && sbuf_append(&out, msgs[i].content, strlen(msgs[i].content));
        first_system = false;
    }
    for (size_t i = 0; ok && i < n; i++) {
        const char *c = msgs[i].content;
        if (strcmp(msgs[i].role, "user") == 0)
            ok = sbuf_printf(&out, DS_USER "%s", c);
        else if (strcmp(msgs[i].role, "assistant") == 0)
            ok = sbuf_printf(&out, DS_ASSISTANT "%s" DS_EOS, c);
    }
    ok = ok && sbuf_append(&out, DS_ASSISTANT, strlen(DS_ASSISTANT));
    if (!ok) sbuf_free(&out);
    return out.data;
}
