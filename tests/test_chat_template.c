/* test_chat_template.c - chat templates (serve.h): the family recognised from a
 * tokenizer_config.json's chat_template, BOS / EOS taken from the config, the fallback and its
 * note, and each built-in renderer against the text the family's reference Jinja template
 * produces for the same conversation (written out here by hand from the published templates). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "check.h"
#include "tessera/serve.h"

#define DS_BOS "<\xEF\xBD\x9C" "begin\xE2\x96\x81of\xE2\x96\x81sentence\xEF\xBD\x9C>"
#define DS_EOS "<\xEF\xBD\x9C" "end\xE2\x96\x81of\xE2\x96\x81sentence\xEF\xBD\x9C>"
#define DS_USER "<\xEF\xBD\x9CUser\xEF\xBD\x9C>"
#define DS_ASSISTANT "<\xEF\xBD\x9C" "Assistant\xEF\xBD\x9C>"

static const ts_chat_message convo[] = {
    {"system", "Be brief."}, {"user", "Hi"}, {"assistant", "Hello!"}, {"user", "2+2?"}};
#define N_CONVO 4

static ts_chat_template from_config(const char *json, ts_status want) {
    ts_chat_template t;
    char err[256] = "";
    ts_status s = ts_chat_template_from_config(json, strlen(json), "cfg", &t, err, sizeof err);
    CHECK(s == want, "%s -> %s (%s)", json, ts_status_name(s), err);
    return t;
}

/* Detects the family of `json`, then renders the conversation and compares. */
static void expect_render(const char *json, ts_chat_family family, const char *want) {
    ts_chat_template t = from_config(json, TS_OK);
    CHECK(t.family == family, "%s: family %s, want %s", json, ts_chat_family_name(t.family), ts_chat_family_name(family));
    CHECK(t.note[0] == 0, "%s: recognised, yet a note: %s", json, t.note);
    char *s = ts_chat_template_render(&t, convo, N_CONVO);
    CHECK(s && !strcmp(s, want), "%s renders\n%s\nwant\n%s", ts_chat_family_name(family), s ? s : "(null)", want);
    free(s);
}

static void test_families(void) {
    expect_render("{\"chat_template\": \"{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\\\n' + "
                  "message['content'] + '<|im_end|>' + '\\\\n'}}{% endfor %}\", \"bos_token\": null, "
                  "\"eos_token\": \"<|im_end|>\"}",
                  TS_CHAT_CHATML,
                  "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
                  "Hello!<|im_end|>\n<|im_start|>user\n2+2?<|im_end|>\n<|im_start|>assistant\n");
    expect_render("{\"chat_template\": \"{{ bos_token }}{% for m in messages %}{{ '<|start_header_id|>' + m['role'] + "
                  "'<|end_header_id|>\\\\n\\\\n' + m['content'] | trim + '<|eot_id|>' }}{% endfor %}\", "
                  "\"bos_token\": \"<|begin_of_text|>\", \"eos_token\": \"<|eot_id|>\"}",
                  TS_CHAT_LLAMA3,
                  "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>"
                  "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|><|start_header_id|>assistant<|end_header_id|>"
                  "\n\nHello!<|eot_id|><|start_header_id|>user<|end_header_id|>\n\n2+2?<|eot_id|>"
                  "<|start_header_id|>assistant<|end_header_id|>\n\n");
    expect_render("{\"chat_template\": \"{{ bos_token }}{% for m in messages %}<start_of_turn>{{ role }}{% endfor %}\", "
                  "\"bos_token\": {\"content\": \"<bos>\", \"lstrip\": false}, \"eos_token\": \"<eos>\"}",
                  TS_CHAT_GEMMA,
                  "<bos><start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n<start_of_turn>model\nHello!<end_of_turn>\n"
                  "<start_of_turn>user\n2+2?<end_of_turn>\n<start_of_turn>model\n");
    expect_render("{\"chat_template\": \"{{ bos_token + '[INST] ' + '<<SYS>>\\\\n' }}\", \"bos_token\": \"<s>\", "
                  "\"eos_token\": \"</s>\"}",
                  TS_CHAT_LLAMA2,
                  "<s>[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\nHi [/INST] Hello! </s><s>[INST] 2+2? [/INST]");
    expect_render("{\"chat_template\": \"{{ bos_token }}{{ '[INST] ' + message['content'] + ' [/INST]' }}\"}",
                  TS_CHAT_MISTRAL, "<s>[INST] Be brief.\n\nHi [/INST]Hello!</s>[INST] 2+2? [/INST]");
    expect_render("{\"chat_template\": \"{{'<|' + message['role'] + '|>\\\\n' + message['content'] + '<|end|>\\\\n'}}"
                  "{{ '<|assistant|>\\\\n' }}\"}",
                  TS_CHAT_PHI3,
                  "<|system|>\nBe brief.<|end|>\n<|user|>\nHi<|end|>\n<|assistant|>\nHello!<|end|>\n<|user|>\n2+2?<|end|>\n"
                  "<|assistant|>\n");
    /* DeepSeek, recognised by either marker, BOS / EOS from the config */
    expect_render("{\"chat_template\": \"{{ '" DS_USER "' + message['content'] }}\", \"bos_token\": \"<B>\", "
                  "\"eos_token\": {\"content\": \"<E>\"}}",
                  TS_CHAT_DEEPSEEK, "<B>Be brief." DS_USER "Hi" DS_ASSISTANT "Hello!<E>" DS_USER "2+2?" DS_ASSISTANT);
}

static void test_end_of_turn(void) {
    ts_chat_template t = from_config("{\"chat_template\": \"<|im_start|>\"}", TS_OK);
    CHECK(!strcmp(ts_chat_template_end_of_turn(&t), "<|im_end|>"), "chatml end of turn");
    t = from_config("{\"chat_template\": \"<|start_header_id|>\"}", TS_OK);
    CHECK(!strcmp(ts_chat_template_end_of_turn(&t), "<|eot_id|>"), "llama3 end of turn");
    t = from_config("{\"chat_template\": \"[INST]\", \"eos_token\": \"<END>\"}", TS_OK);
    CHECK(!strcmp(ts_chat_template_end_of_turn(&t), "<END>"), "mistral: the eos");
    t = ts_chat_template_default();
    CHECK(!strcmp(ts_chat_template_end_of_turn(&t), DS_EOS), "deepseek: its eos");
}

static void test_default_and_fallback(void) {
    /* the server's default is unchanged: several system messages joined, in front */
    ts_chat_message m[] = {{"system", "Be brief."}, {"user", "Hi"}, {"assistant", "Hello!"}, {"system", "Rule 2."},
                           {"user", "2+2?"}};
    char *s = ts_chat_template_deepseek(NULL, m, 5);
    const char *want = DS_BOS "Be brief.\n\nRule 2." DS_USER "Hi" DS_ASSISTANT "Hello!" DS_EOS DS_USER "2+2?" DS_ASSISTANT;
    CHECK(s && !strcmp(s, want), "DeepSeek template: %s", s ? s : "(null)");
    free(s);
    s = ts_chat_template_deepseek(NULL, NULL, 0);
    CHECK(s && !strcmp(s, DS_BOS DS_ASSISTANT), "empty conversation: %s", s ? s : "(null)");
    free(s);

    const char *unknown[] = {"{\"chat_template\": \"{% for m in messages %}### {{ m.role }}: {{ m.content }}{% endfor %}\"}",
                             "{\"bos_token\": \"<s>\"}", "{\"chat_template\": 42}", "{}"};
    for (int i = 0; i < 4; i++) {
        ts_chat_template t = from_config(unknown[i], TS_OK);
        CHECK(t.family == TS_CHAT_DEEPSEEK && t.note[0], "%s: falls back with a note (%s)", unknown[i], t.note);
    }
    ts_chat_template t = from_config("{\"bos_token\": \"<s>\"}", TS_OK);
    CHECK(!strcmp(t.bos, "<s>") && !strcmp(t.eos, DS_EOS), "fallback keeps the config's bos: %s %s", t.bos, t.eos);
    /* a list of named templates: the "default" one */
    t = from_config("{\"chat_template\": [{\"name\": \"tool_use\", \"template\": \"[INST]\"}, "
                    "{\"name\": \"default\", \"template\": \"<|im_start|>\"}]}",
                    TS_OK);
    CHECK(t.family == TS_CHAT_CHATML, "list form: %s", ts_chat_family_name(t.family));
}

static void test_bad_configs(void) {
    from_config("{\"chat_template\": ", TS_ERR_FORMAT);
    from_config("[1, 2]", TS_ERR_FORMAT);
    char big[400];
    snprintf(big, sizeof big, "{\"bos_token\": \"%0200d\"}", 0);
    from_config(big, TS_ERR_FORMAT);
}

static void test_load_dir(void) {
    char dir[] = "/tmp/ts_chat_template_XXXXXX";
    CHECK(mkdtemp(dir) != NULL, "mkdtemp");
    ts_chat_template t;
    char err[256] = "", path[256];
    CHECK(ts_chat_template_load(dir, &t, err, sizeof err) == TS_OK && t.family == TS_CHAT_DEEPSEEK && t.note[0],
          "no tokenizer_config.json: the default, with a note (%s)", err);
    snprintf(path, sizeof path, "%s/tokenizer_config.json", dir);
    FILE *f = fopen(path, "w");
    fputs("{\"chat_template\": \"<|start_header_id|>\", \"bos_token\": \"<|begin_of_text|>\"}", f);
    fclose(f);
    CHECK(ts_chat_template_load(dir, &t, err, sizeof err) == TS_OK && t.family == TS_CHAT_LLAMA3 && !t.note[0] &&
              !strcmp(t.bos, "<|begin_of_text|>"),
          "llama3 from the directory (%s)", err);
    f = fopen(path, "w");
    fputs("not json", f);
    fclose(f);
    CHECK(ts_chat_template_load(dir, &t, err, sizeof err) == TS_ERR_FORMAT && strstr(err, "tokenizer_config.json"),
          "broken file: %s", err);
    unlink(path);
    rmdir(dir);
}

int main(void) {
    test_families();
    test_end_of_turn();
    test_default_and_fallback();
    test_bad_configs();
    test_load_dir();
    return check_summary("test_chat_template");
}
