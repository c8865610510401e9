/* cli_chat.c - `tessera chat --model DIR`: an interactive chat in the terminal. Each line read
 * from standard input is a user turn; the conversation is rendered with the model's chat
 * template (serve.h: ts_chat_template_load reads DIR/tokenizer_config.json), tokenized, and the
 * reply is sampled (infer.h) and streamed to standard output, then kept in the history.
 *
 * The decoder's one slot holds the conversation so far, so a turn feeds only the tokens the
 * cache does not have yet. When the new rendering extends the previous one (prompt + reply) as
 * text, its ids are the cached ones plus the tokenized rest - the reply's own tokens stay, even
 * where tokenizing its text would split it differently; otherwise the whole text is tokenized.
 * The longest common prefix of the cached ids and those is kept (truncating the slot, or
 * starting it over when the model cannot rewind), the rest goes in with
 * ts_model_decoder_extend, and each sampled token with ts_model_decoder_step. `/reset`
 * forgets the conversation (the --system message stays), `/exit` or the end of input quits;
 * tokens/s per reply go to standard error. Works the same when standard input is a pipe. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cli/cli.h"
#include "tessera/backend.h"
#include "tessera/data.h"
#include "tessera/infer.h"
#include "tessera/model.h"
#include "tessera/serve.h"
#include "tessera/tokenizer.h"

#define CMD "chat"

typedef struct {
    /* options */
    const char *system;
    int max_tokens, context;
    ts_sampling_params sampling; /* its seed is the first reply's */
    /* the model */
    ts_tokenizer *tok; /* NULL: the byte-level vocabulary of the tiny presets */
    ts_chat_template tmpl;
    int32_t eos, end_of_turn;
    int64_t vocab;
    ts_model_decoder *dec;
    ts_sampler *sampler;
    float *logits;
    /* the conversation */
    ts_chat_message *msgs; /* contents malloc'd; [0] is the system message when there is one */
    size_t n_msgs, cap_msgs;
    int32_t *fed; /* [context]: the ids in the decoder's slot */
    int64_t n_fed;
    int32_t unfed;    /* the reply's last token when it ended at --max-tokens (not in the slot), or -1 */
    ts_token_ids ids; /* the current rendering, tokenized */
    char *prompt;     /* the last turn's rendering (malloc'd), which with the reply is what the ids say */
    char *reply;      /* [reply_cap] the reply's bytes */
    size_t reply_n, reply_cap;
    int turn;
    uint8_t byte; /* the one byte of a byte-level token (token_bytes points here) */
} chat_session;

/* ---------------------------------------------------------------- text <-> ids */

static bool reserve_ids(ts_token_ids *t, size_t extra) {
    if (t->n + extra <= t->cap) return true;
    size_t cap = 2 * (t->n + extra);
    int32_t *ids = realloc(t->ids, cap * sizeof *ids);
    if (!ids) return false;
    t->ids = ids;
    t->cap = cap;
    return true;
}

/* Appends the ids of text to s->ids. */
static ts_status encode_append(chat_session *s, const char *text) {
    size_t len = strlen(text);
    if (s->tok) {
        ts_io_error ioe;
        return ts_tokenizer_encode(s->tok, text, len, TS_TOKENIZE_PARSE_SPECIAL, &s->ids, &ioe);
    }
    if (!reserve_ids(&s->ids, len)) return TS_ERR_OOM;
    for (size_t i = 0; i < len; i++) s->ids.ids[s->ids.n++] = (uint8_t)text[i] + TS_BYTE_OFFSET;
    return TS_OK;
}

/* s->ids for the rendering `text`: the cached ids + the tokens of what follows the previous
 * prompt and reply when text extends them, else text tokenized whole. */
static ts_status encode_conversation(chat_session *s, const char *text) {
    ts_token_ids_clear(&s->ids);
    size_t n_prompt = s->prompt ? strlen(s->prompt) : 0;
    bool extends = s->prompt && !strncmp(text, s->prompt, n_prompt) && strlen(text + n_prompt) >= s->reply_n &&
                   !memcmp(text + n_prompt, s->reply ? s->reply : "", s->reply_n);
    if (!extends) return encode_append(s, text);
    if (!reserve_ids(&s->ids, (size_t)s->n_fed + 1)) return TS_ERR_OOM;
    memcpy(s->ids.ids, s->fed, (size_t)s->n_fed * sizeof *s->fed);
    s->ids.n = (size_t)s->n_fed;
    if (s->unfed >= 0) s->ids.ids[s->ids.n++] = s->unfed;
    return encode_append(s, text + n_prompt + s->reply_n);
}

/* The bytes of one generated id (special tokens have none); NULL when there are none. */
static const uint8_t *token_bytes(chat_session *s, int32_t id, size_t *n) {
    *n = 0;
    if (s->tok) return ts_tokenizer_is_special(s->tok, id) ? NULL : ts_tokenizer_id_to_bytes(s->tok, id, n);
    if (id < TS_BYTE_OFFSET || id >= TS_BYTE_OFFSET + 256) return NULL;
    s->byte = (uint8_t)(id - TS_BYTE_OFFSET);
    *n = 1;
    return &s->byte;
}

/* ---------------------------------------------------------------- history */

static bool push_message(chat_session *s, const char *role, const char *text, size_t len) {
    if (s->n_msgs == s->cap_msgs) {
        size_t cap = s->cap_msgs ? 2 * s->cap_msgs : 8;
        ts_chat_message *m = realloc(s->msgs, cap * sizeof *m);
        if (!m) return false;
        s->msgs = m;
        s->cap_msgs = cap;
    }
    char *copy = strndup(text, len);
    if (!copy) return false;
    s->msgs[s->n_msgs++] = (ts_chat_message){role, copy};
    return true;
}

static void pop_message(chat_session *s) { free((char *)s->msgs[--s->n_msgs].content); }

/* Back to the start: only the system message, an empty slot. */
static void reset_conversation(chat_session *s) {
    while (s->n_msgs > (s->system ? 1u : 0u)) pop_message(s);
    ts_model_decoder_reset(s->dec, 0);
    s->n_fed = 0;
    free(s->prompt);
    s->prompt = NULL;
    s->reply_n = 0;
    s->unfed = -1;
}

/* ---------------------------------------------------------------- one turn */

/* Brings the slot to s->ids: keeps the longest common prefix already cached, feeds the rest,
 * and leaves the logits after the last id in s->logits. */
static ts_status sync_cache(chat_session *s, int64_t *fed_now) {
    int64_t n = (int64_t)s->ids.n, common = 0;
    while (common < s->n_fed && common < n && s->fed[common] == s->ids.ids[common]) common++;
    if (common == n) common--; /* the last id is fed again: its logits are what we sample from */
    if (common < s->n_fed) {
        if (ts_model_decoder_truncate(s->dec, 0, common) != TS_OK) { /* cannot rewind: start the slot over */
            ts_model_decoder_reset(s->dec, 0);
            common = 0;
        }
        s->n_fed = common;
    }
    *fed_now = n - common;
    ts_status st = ts_model_decoder_extend(s->dec, 0, s->ids.ids + common, n - common, s->logits, 1);
    if (st == TS_OK) {
        memcpy(s->fed + common, s->ids.ids + common, (size_t)(n - common) * sizeof *s->fed);
        s->n_fed = n;
    }
    return st;
}

static bool append_reply(chat_session *s, const uint8_t *b, size_t n) {
    if (s->reply_n + n + 1 > s->reply_cap) {
        size_t cap = 2 * (s->reply_n + n + 1);
        char *r = realloc(s->reply, cap);
        if (!r) return false;
        s->reply = r;
        s->reply_cap = cap;
    }
    memcpy(s->reply + s->reply_n, b, n);
    s->reply_n += n;
    s->reply[s->reply_n] = 0;
    return true;
}

/* Samples and streams the reply to the prompt in the slot; *n_out: tokens generated. */
static ts_status generate(chat_session *s, int *n_out) {
    ts_sampling_params p = s->sampling;
    p.seed += (uint64_t)s->turn;
    ts_status st = ts_sampler_start(s->sampler, &p, s->ids.ids, s->ids.n);
    s->reply_n = 0;
    s->unfed = -1;
    int generated = 0;
    int slot = 0;
    while (st == TS_OK && generated < s->max_tokens) {
        int32_t next;
        st = ts_sampler_sample(s->sampler, s->logits, &next, NULL);
        if (st != TS_OK || next == s->eos || next == s->end_of_turn) break;
        size_t nb;
        const uint8_t *b = token_bytes(s, next, &nb);
        if (nb) {
            fwrite(b, 1, nb, stdout);
            fflush(stdout);
            if (!append_reply(s, b, nb)) st = TS_ERR_OOM;
        }
        s->unfed = next;
        if (++generated == s->max_tokens || st != TS_OK) break;
        s->unfed = -1;
        st = ts_model_decoder_step(s->dec, 1, &slot, &next, s->logits);
        if (st == TS_OK) s->fed[s->n_fed++] = next;
    }
    *n_out = generated;
    return st;
}

/* One user line: render, feed what is new, stream the reply, keep it. Returns an exit code, or
 * CLI_CONTINUE. A conversation that no longer fits is refused (the line is dropped). */
static int chat_turn(chat_session *s, const char *line) {
    if (!push_message(s, "user", line, strlen(line))) return cli_failure(CMD, "out of memory");
    char *text = ts_chat_template_render(&s->tmpl, s->msgs, s->n_msgs);
    ts_status st = text ? encode_conversation(s, text) : TS_ERR_OOM;
    if (st != TS_OK) {
        free(text);
        return cli_failure(CMD, "encoding the conversation: %s", ts_status_name(st));
    }
    if ((int64_t)s->ids.n + s->max_tokens > s->context) {
        fprintf(stderr, "tessera chat: the conversation (%zu tokens) plus --max-tokens %d would pass --context %d; "
                        "/reset starts over\n", s->ids.n, s->max_tokens, s->context);
        free(text);
        pop_message(s);
        return CLI_CONTINUE;
    }
    free(s->prompt);
    s->prompt = text;
    double t0 = ts_time_seconds();
    int64_t fed_now = 0;
    int generated = 0;
    st = sync_cache(s, &fed_now);
    double t1 = ts_time_seconds();
    if (st == TS_OK) st = generate(s, &generated);
    double t2 = ts_time_seconds();
    fputc('\n', stdout);
    fflush(stdout);
    if (st != TS_OK) return cli_failure(CMD, "decoding failed: %s", ts_status_name(st));
    if (!push_message(s, "assistant", s->reply ? s->reply : "", s->reply_n)) return cli_failure(CMD, "out of memory");
    s->turn++;
    fprintf(stderr, "[%d tokens in %.2f s, %.1f tokens/s; prompt: %lld new tokens in %.2f s, %lld cached]\n", generated,
            t2 - t1, t2 > t1 ? generated / (t2 - t1) : 0.0, (long long)fed_now, t1 - t0,
            (long long)(s->ids.n - (size_t)fed_now));
    return CLI_CONTINUE;
}

/* Reads lines until /exit or the end of input. */
static int chat_loop(chat_session *s) {
    bool tty = isatty(STDIN_FILENO);
    char *line = NULL;
    size_t cap = 0;
    int rc = CLI_CONTINUE;
    while (rc == CLI_CONTINUE) {
        if (tty) {
            fputs("> ", stdout);
            fflush(stdout);
        }
        ssize_t n = getline(&line, &cap, stdin);
        if (n < 0) break;
        while (n > 0 && (line[n - 1] == '\n' || line[n - 1] == '\r')) line[--n] = 0;
        if (n == 0) continue;
        if (!strcmp(line, "/exit")) break;
        if (!strcmp(line, "/reset")) {
            reset_conversation(s);
            fprintf(stderr, "[conversation reset]\n");
            continue;
        }
        rc = chat_turn(s, line);
    }
    free(line);
    return rc == CLI_CONTINUE ? CLI_EXIT_OK : rc;
}

/* ---------------------------------------------------------------- setup */

static int open_model(chat_session *s, const char *dir, const ts_model_weights *w, ts_backend *be) {
    char path[4096], err[512] = "";
    struct stat sb;
    ts_io_error ioe;
    snprintf(path, sizeof path, "%s/tokenizer.json", dir);
    if (stat(path, &sb) == 0 && ts_tokenizer_load(dir, &s->tok, &ioe) != TS_OK)
        return cli_failure(CMD, "loading the tokenizer: %s", ioe.message);
    s->vocab = ts_model_weights_config(w)->vocab_size;
    if (!s->tok && s->vocab < TS_BYTE_OFFSET + 256)
        return cli_failure(CMD, "no tokenizer.json in %s, and the model's vocabulary is not byte-level", dir);
    if (ts_chat_template_load(dir, &s->tmpl, err, sizeof err) != TS_OK) return cli_failure(CMD, "%s", err);
    if (s->tmpl.note[0]) fprintf(stderr, "tessera chat: %s\n", s->tmpl.note);
    const char *eot = ts_chat_template_end_of_turn(&s->tmpl);
    s->eos = s->tok ? ts_tokenizer_eos_id(s->tok) : TS_BYTE_EOS;
    s->end_of_turn = s->tok ? ts_tokenizer_token_to_id(s->tok, eot, strlen(eot)) : -1;
    s->logits = malloc((size_t)s->vocab * sizeof *s->logits);
    s->fed = malloc((size_t)s->context * sizeof *s->fed);
    if (!s->logits || !s->fed || ts_sampler_new((int32_t)s->vocab, &s->sampler) != TS_OK)
        return cli_failure(CMD, "out of memory");
    if (ts_model_decoder_new(w, be, 1, s->context, &s->dec, err, sizeof err) != TS_OK) return cli_failure(CMD, "%s", err);
    if (s->system && !push_message(s, "system", s->system, strlen(s->system))) return cli_failure(CMD, "out of memory");
    return CLI_CONTINUE;
}

static void close_session(chat_session *s) {
    while (s->n_msgs) pop_message(s);
    free(s->msgs);
    free(s->fed);
    free(s->logits);
    free(s->reply);
    free(s->prompt);
    ts_token_ids_free(&s->ids);
    ts_sampler_free(s->sampler);
    ts_model_decoder_free(s->dec);
    ts_tokenizer_free(s->tok);
}

int cli_chat_main(int argc, char **argv) {
    const char *model = NULL, *dtype = "f32";
    int threads = 0;
    chat_session s = {.max_tokens = 256, .context = 2048, .sampling = ts_sampling_defaults(), .unfed = -1};
    s.sampling.temperature = 0.7f;
    const cli_option options[] = {
        {"--model", CLI_OPT_STRING, &model, "DIR", "checkpoint directory (config.json + model.safetensors [+ tokenizer files])", 0, 0},
        {"--dtype", CLI_OPT_STRING, &dtype, "T", CLI_DTYPE_HELP, 0, 0},
        {"--system", CLI_OPT_STRING, &s.system, "TEXT", "a system message opening the conversation", 0, 0},
        {"--max-tokens", CLI_OPT_INT, &s.max_tokens, "N", "longest reply in tokens", 1, 1 << 20},
        CLI_SAMPLING_OPTIONS(s.sampling),
        {"--seed", CLI_OPT_U64, &s.sampling.seed, "S", "sampling seed (reply i uses S + i: same seed, same conversation)", 0, 0},
        {"--context", CLI_OPT_INT, &s.context, "T", "positions the conversation may fill (the KV-cache budget)", 2, 1 << 24},
        {"--threads", CLI_OPT_INT, &threads, "N", "compute threads (0: every core)", 0, 1024},
    };
    const cli_spec spec = {CMD, "Chat with a model in the terminal: one line per user turn, the reply streamed.",
                           "The conversation goes through the model's chat template (DIR/tokenizer_config.json; see\n"
                           "serve.h for the families recognised) and stays in the KV cache between turns, so each turn\n"
                           "only feeds its new tokens. '/reset' starts over, '/exit' or the end of input quits.\n"
                           "Reads standard input line by line, a terminal or a pipe; timings go to standard error.",
                           options, (int)(sizeof options / sizeof *options)};
    int rc = cli_parse(&spec, argc, argv);
    if (rc != CLI_CONTINUE) return rc;
    if (!model) return cli_usage_error(CMD, "--model DIR is required");
    if (s.max_tokens >= s.context) return cli_usage_error(CMD, "--max-tokens %d leaves no room in --context %d", s.max_tokens, s.context);
    const char *bad = ts_sampling_params_check(&s.sampling, NULL);
    if (bad) return cli_usage_error(CMD, "%s", bad);
    ts_dtype matmul_dtype;
    if ((rc = cli_matmul_dtype(CMD, dtype, &matmul_dtype)) != CLI_CONTINUE) return rc;

    char err[512] = "";
    ts_model_weights *w = NULL;
    ts_backend *be = NULL;
    if (ts_model_load_for_inference(model, matmul_dtype, &w, err, sizeof err) != TS_OK) return cli_failure(CMD, "%s", err);
    if (ts_backend_cpu_new(threads, &be) != TS_OK) rc = cli_failure(CMD, "cannot create the CPU backend");
    if (rc == CLI_CONTINUE) rc = open_model(&s, model, w, be);
    if (rc == CLI_CONTINUE) {
        if (isatty(STDIN_FILENO))
            fprintf(stderr, "tessera chat: %s, %s template; /reset starts over, /exit quits\n", model,
                    ts_chat_family_name(s.tmpl.family));
        rc = chat_loop(&s);
    }
    close_session(&s);
    ts_backend_free(be);
    ts_model_weights_free(w);
    return rc;
}
