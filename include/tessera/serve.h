/* serve.h - the HTTP layer of `tessera serve`: an OpenAI-compatible server (libmicrohttpd +
 * jansson) that turns requests into token streams from an inference engine it knows only
 * through the ts_engine table below.
 *
 * Endpoints: POST /v1/completions and /v1/chat/completions (JSON, or SSE with "stream": true
 * ending in "data: [DONE]"), GET /v1/models, /health, /metrics (Prometheus text), and / (a
 * self-contained chat page). Every failure is an OpenAI-shaped JSON error
 * {"error": {"message", "type", "param", "code"}} with a 4xx/5xx status; the server never prints.
 *
 * How to plug an engine in
 * ------------------------
 * Fill a ts_engine with your object in `self` and five functions:
 *   tokenize    text -> ids, appended to a ts_token_ids (ts_tokenizer_encode with
 *               TS_TOKENIZE_PARSE_SPECIAL, plus TS_TOKENIZE_ADD_BOS when add_bos);
 *   detokenize  one id -> its bytes, appended (ts_tokenizer_decode of that one id; the server
 *               concatenates tokens' bytes, which is exact for byte-level BPE, and holds back
 *               incomplete UTF-8 while streaming);
 *   submit      start generating for a ts_gen_request (copy the prompt: it is the caller's).
 *               The engine's own worker thread (continuous batching) then calls
 *               req->sink.token(user, id, lp) for each generated id, in order, at most
 *               max_tokens times - lp is the token's ts_logprobs (infer.h) with
 *               req->top_logprobs alternatives when req->logprobs, else NULL - and finally
 *               req->sink.done(user, end) exactly once; after done it
 *               never touches the request again. The stop token itself (EOS / end of turn) is
 *               not passed to token(): the engine ends with TS_GEN_STOP_TOKEN. Both callbacks
 *               only append under a mutex and signal; they never block on the network.
 *               Return TS_OK (done will follow), TS_ERR_STATE when the engine is full and
 *               cannot queue more (HTTP 503; the caller retries later), TS_ERR_RANGE when the
 *               request can never fit (prompt + max_tokens beyond the context, an id outside
 *               the vocabulary: HTTP 400). On any error done must not be called.
 *   cancel      stop request `id` soon (client gone, stop string matched, timeout, shutdown):
 *               the engine frees its KV cache and calls done(TS_GEN_CANCELLED) - or whichever
 *               end came first - promptly, from its thread. An unknown or finished id is a
 *               no-op. Called from HTTP threads, possibly while token() runs.
 *   stats       KV-cache use and queue length for /metrics; may be called at any time.
 * All five are called concurrently from several HTTP threads. Sampling happens in the engine
 * (one ts_sampler per sequence, infer.h) with the ts_sampling_params the request carries.
 * tests/test_serve.c holds a small fake engine that follows this contract.
 *
 * Chat template: messages are turned into prompt text by options.chat_template, by default
 * ts_chat_template_deepseek (DeepSeek-V3's format, below); the text is then tokenized with
 * add_bos false, since the template writes the BOS token itself. The template of a model
 * directory (ts_chat_template_load, below) plugs into the same hook with
 * ts_chat_template_render. Completions prompts are tokenized with add_bos true. */
#ifndef TESSERA_SERVE_H
#define TESSERA_SERVE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "tessera/backend.h"
#include "tessera/core.h"
#include "tessera/infer.h"
#include "tessera/model.h"
#include "tessera/io.h"
#include "tessera/tokenizer.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---------------------------------------------------------------- engine interface */

typedef enum {
    TS_GEN_STOP_TOKEN = 0, /* the model produced a stop token: finish_reason "stop" */
    TS_GEN_LENGTH,         /* max_tokens reached, or the context is full: "length" */
    TS_GEN_CANCELLED,      /* cancel() was called */
    TS_GEN_ERROR           /* the engine failed this request (HTTP 500 / an SSE error event) */
} ts_gen_end;

typedef struct {
    void *user;
    void (*token)(void *user, int32_t id, const ts_token_logprobs *lp);
    void (*done)(void *user, ts_gen_end end);
    /* With prompt_logprobs: the prompt token at pos (1 .. n_prompt - 1, in order, before any
     * generated token) and its log-probabilities after the tokens before it. */
    void (*prompt_token)(void *user, int64_t pos, const ts_token_logprobs *lp);
} ts_gen_sink;

#define TS_GEN_MAX_STOP_IDS 8

typedef struct {
    uint64_t id;              /* unique per server; the key for cancel */
    const int32_t *prompt;    /* valid during submit only */
    size_t n_prompt;          /* >= 1 */
    int32_t max_tokens;       /* >= 1 */
    ts_sampling_params sampling;
    int32_t stop_ids[TS_GEN_MAX_STOP_IDS]; /* more ids that end the generation as the EOS does
                                            (the request's stop_token_ids, a chat's end of turn) */
    int n_stop_ids;
    bool logprobs;            /* report each token's log-probability (sink.token's lp) ... */
    int32_t top_logprobs;     /* ... and this many alternatives, 0..TS_MAX_TOP_LOGPROBS */
    bool prompt_logprobs;     /* with logprobs, the prompt tokens' too (sink.prompt_token): the
                                 prompt is then computed whole, not taken from a cached prefix;
                                 an engine that cannot (speculative) says TS_ERR_UNSUPPORTED */
    ts_gen_sink sink;
} ts_gen_request;

/* The first three are required; the rest are optional (leave 0 when the engine has no such
 * thing: /metrics then shows 0). */
typedef struct {
    double kv_cache_usage; /* fraction of the KV-cache pool in use, [0, 1]: a shared pool's blocks
                              held (idle slots' caches included: evicted on demand), else the
                              running sequences' positions */
    int64_t queued;        /* requests waiting for admission */
    int64_t running;       /* sequences in the running batch */
    int64_t kv_positions_running; /* cache positions held by running sequences */
    int64_t kv_positions_cached;  /* positions idle slots and prefix checkpoints keep for prefix reuse (reclaimable) */
    int64_t kv_positions_capacity;/* positions of the whole pool (blocks x positions per block) */
    int64_t kv_bytes;             /* memory of the whole pool */
    int64_t kv_blocks;            /* blocks of the pool (ts_model_decoder_pool) */
    int64_t kv_blocks_free;       /* held by no sequence, running or cached */
    int64_t preemptions;          /* running requests sent back to the queue for want of blocks (counter) */
    int64_t prefix_cache_hits;    /* admitted requests that reused a cached prefix (counter) */
    int64_t prefix_reused_tokens; /* prompt tokens taken from the cache instead of prefilled (counter) */
    int64_t prefix_checkpoints;   /* sequences' states kept at block boundaries for prefix reuse (V4) */
    int64_t prefill_tokens;       /* prompt tokens run through the model (counter) */
    int64_t forward_passes;       /* the model's forward passes (counter): prompt chunks and decode steps share them */
    int64_t spec_drafted;         /* speculative decoding: draft tokens proposed (counter) */
    int64_t spec_accepted;        /* ... and accepted by the model (counter) */
} ts_engine_stats;

typedef struct {
    void *self;
    ts_status (*tokenize)(void *self, const char *text, size_t len, bool add_bos, ts_token_ids *out);
    ts_status (*detokenize)(void *self, int32_t id, ts_token_bytes *out);
    ts_status (*submit)(void *self, const ts_gen_request *req);
    void (*cancel)(void *self, uint64_t id);
    void (*stats)(void *self, ts_engine_stats *out);
} ts_engine;

/* ---------------------------------------------------------------- chat template */

typedef struct {
    const char *role;    /* "system", "user" or "assistant" ("developer" arrives as "system") */
    const char *content; /* text parts joined */
} ts_chat_message;

/* Returns the prompt text for the conversation, ending with the assistant's turn opened,
 * as a malloc'd NUL-terminated string (NULL: out of memory). */
typedef char *(*ts_chat_template_fn)(void *user, const ts_chat_message *msgs, size_t n);

/* DeepSeek-V3's template: "<｜begin▁of▁sentence｜>" + the system messages joined by "\n\n", then
 * per turn "<｜User｜>" + text, or "<｜Assistant｜>" + text + "<｜end▁of▁sentence｜>", and a final
 * "<｜Assistant｜>". `user` is unused. */
char *ts_chat_template_deepseek(void *user, const ts_chat_message *msgs, size_t n);

/* A model's own template, from its tokenizer_config.json. We embed no Jinja engine: the
 * `chat_template` string (or the entry named "default" of a list of {name, template}) is
 * recognised by the markers its family writes, first match wins, and rendered by a built-in
 * renderer of that family (S = the system messages joined by "\n\n", trim = surrounding
 * whitespace removed):
 *   "<｜User｜>" or "<｜Assistant｜>"  DeepSeek: as ts_chat_template_deepseek
 *   "<|im_start|>"            ChatML (Qwen...): "<|im_start|>ROLE\nTEXT<|im_end|>\n" per message
 *                             (system ones in place), then "<|im_start|>assistant\n"; no BOS
 *   "<|start_header_id|>"     Llama 3: BOS, "<|start_header_id|>ROLE<|end_header_id|>\n\n" +
 *                             trim(TEXT) + "<|eot_id|>" per message, then the assistant header
 *   "<start_of_turn>"         Gemma: BOS, "<start_of_turn>user\n" + trim(TEXT) + "<end_of_turn>\n"
 *                             (role "model" for the assistant; S + "\n\n" opens the first user
 *                             text), then "<start_of_turn>model\n"
 *   "[INST]" and "<<SYS>>"    Llama 2: per user turn BOS + "[INST] " + trim(TEXT) + " [/INST]" (the
 *                             first wrapped as "<<SYS>>\nS\n<</SYS>>\n\n" + TEXT), per assistant
 *                             turn " " + trim(TEXT) + " " + EOS
 *   "[INST]"                  Mistral: BOS once, "[INST] " + TEXT + " [/INST]" per user turn
 *                             (S + "\n\n" opens the first), TEXT + EOS per assistant turn
 *   "<|assistant|>" and "<|end|>"  Phi-3: "<|ROLE|>\nTEXT<|end|>\n" per message, then
 *                             "<|assistant|>\n"
 * Anything else - no tokenizer_config.json, no chat_template, or one matching none of these -
 * falls back to the DeepSeek format, and `note` says why (the caller prints it once). BOS and
 * EOS are the config's bos_token / eos_token (a string or {"content": ...}) when given, else the
 * family's usual ones. Defaults the real templates add (a date in Llama 3.1's system header,
 * Qwen's default system prompt) are not reproduced. */
typedef enum {
    TS_CHAT_DEEPSEEK = 0,
    TS_CHAT_CHATML,
    TS_CHAT_LLAMA3,
    TS_CHAT_GEMMA,
    TS_CHAT_LLAMA2,
    TS_CHAT_MISTRAL,
    TS_CHAT_PHI3
} ts_chat_family;

#define TS_CHAT_TOKEN_MAX 128

typedef struct {
    ts_chat_family family;
    char bos[TS_CHAT_TOKEN_MAX]; /* as text; "" when the family writes none */
    char eos[TS_CHAT_TOKEN_MAX];
    char note[256];              /* "" when the model's own template was recognised */
} ts_chat_template;

/* The fallback: DeepSeek's format with its own BOS / EOS, and a note saying so. */
ts_chat_template ts_chat_template_default(void);
/* From the text of a tokenizer_config.json; `name` is used in messages. A file that is not a
 * JSON object, or a bos/eos token longer than TS_CHAT_TOKEN_MAX - 1 bytes: TS_ERR_FORMAT. */
ts_status ts_chat_template_from_config(const char *json, size_t len, const char *name, ts_chat_template *out,
                                       char *err, size_t err_size);
/* From DIR/tokenizer_config.json; without that file, the default (TS_OK). TS_ERR_IO when it
 * exists but cannot be read. */
ts_status ts_chat_template_load(const char *dir, ts_chat_template *out, char *err, size_t err_size);
/* A ts_chat_template_fn: `tmpl` is a const ts_chat_template *. */
char *ts_chat_template_render(void *tmpl, const ts_chat_message *msgs, size_t n);
/* "deepseek", "chatml", "llama3", "gemma", "llama2", "mistral", "phi3". */
const char *ts_chat_family_name(ts_chat_family f);
/* The text that closes an assistant turn ("<|im_end|>", "<|eot_id|>", "<end_of_turn>",
 * "<|end|>", else the EOS): a chat reply stops at its token as at the EOS. */
const char *ts_chat_template_end_of_turn(const ts_chat_template *t);

/* ---------------------------------------------------------------- server */

typedef struct {
    const char *host;            /* numeric address or name to bind; default "127.0.0.1" */
    int port;                    /* 0: an ephemeral port (see ts_server_port) */
    const char *model_name;      /* the one model id served; required */
    const char *api_key;         /* NULL or "": no authentication; else /v1/ routes need
                                    "Authorization: Bearer <key>" (401 otherwise); /, /health and
                                    /metrics stay open */
    size_t max_body_bytes;       /* larger request bodies: 413 (default 1 MiB) */
    int32_t max_prompt_tokens;   /* longer prompts: 400 (default 4096) */
    int32_t max_output_tokens;   /* max_tokens above it: 400; also the default (default 1024) */
    int max_concurrent;          /* generation requests in flight at once; one more is answered
                                    429 at once, not queued (the engine has its own queue, and a
                                    full one is 503) (default 64) */
    double request_timeout_s;    /* a generation running longer is cancelled: 504, or an SSE
                                    error event when streaming; 0: none (default 600) */
    ts_chat_template_fn chat_template; /* NULL: ts_chat_template_deepseek */
    void *chat_template_user;
    const char *chat_end_of_turn; /* text of the token that closes an assistant turn
                                     (ts_chat_template_end_of_turn): chat generations stop at
                                     it; NULL, or text that is not one token: at the EOS only */
} ts_server_options;

ts_server_options ts_server_defaults(void);

typedef struct ts_server ts_server;

/* Binds, listens and starts serving on libmicrohttpd's threads (one per connection); returns
 * once the socket accepts connections, so the caller can print the address. The engine table
 * is copied; the engine itself must outlive the server. Errors: TS_ERR_INVALID_ARG (bad
 * options), TS_ERR_IO (cannot bind), TS_ERR_OOM; err says which. */
ts_status ts_server_start(const ts_server_options *opt, const ts_engine *engine, ts_server **out, ts_io_error *err);

/* The bound port (the actual one when options.port was 0). */
int ts_server_port(const ts_server *srv);

/* Graceful shutdown, then frees the server: stops accepting connections, answers new requests
 * on open connections 503, lets in-flight generations finish for up to grace_s seconds,
 * cancels the rest (their clients get a 503 error, or an SSE error event and [DONE]), waits
 * for the engine to confirm every cancellation, closes all connections and returns. Not
 * async-signal-safe: from a SIGTERM handler, set a flag and call this from a normal thread. */
void ts_server_shutdown(ts_server *srv, double grace_s);

/* ---------------------------------------------------------------- the model engine (model_engine.c)
 *
 * The ts_engine of a model (DeepSeek-V4 or the dense baseline): continuous batching over the
 * incremental decoder. Up to `slots` sequences run at once, each up to max_len positions (prompt
 * + output), up to max_queue more wait (a full queue: submit returns TS_ERR_STATE, HTTP 503).
 * KV memory: the decoder keeps a pool of pool_positions shared by the slots
 * (ts_model_decoder_new_pooled: the dense KV cache; V4's compressed entries, each slot owning
 * its fixed state cache besides), which may be smaller than
 * slots x max_len: a request waits in the queue until the pool has room for its prompt, and
 * when the running sequences outgrow it the youngest is preempted - back to the queue front, to
 * be recomputed later with its sampler state kept, so its output does not change. A request
 * that could not fit the pool even alone is TS_ERR_RANGE. Each iteration of the engine's
 * worker advances every generating sequence by one sampled token and feeds prompt chunks of the
 * prefilling requests, up to prefill_chunk prompt tokens in all (round-robin among them), in
 * one ts_model_decoder_batch (the dense model: one forward pass) - so a long prompt delays the
 * other streams by one chunk per token, not by its whole length. With prefix_cache, a new request
 * starts from the longest prefix of its prompt that any sequence holds, running or finished (a
 * finished sequence's tokens stay in its slot until the memory is needed): only the rest is
 * prefilled (multi-turn chat re-sends the conversation: only the new turn is computed; requests
 * sharing a system prompt share its blocks). A model whose caches rewind only a few tokens (V4)
 * reaches a prefix further back through checkpoints: up to `checkpoints` extra slots of fixed
 * state (pool blocks shared) hold a sequence at a block boundary, taken when a request repeats a
 * prefix longer than a block that no cache could rewind to, for the requests after it.
 * With speculative, an iteration whose only work is one generating sequence runs a round of
 * ts_speculator (model.h: the MTP block drafts a token, one two-token pass verifies it) instead
 * of a one-row step - a server's quiet periods, where batching has nothing to share; the MTP
 * block is kept within TS_MODEL_MTP_MAX_LAG tokens of every sequence between such rounds (one
 * catch-up pass per TS_MODEL_MTP_MAX_LAG / 2 tokens). Greedy outputs are unchanged; sampled ones
 * keep their distribution, but which tokens a seed gives then depends on the rounds the
 * request got (on the other traffic), so a seed reproduces its output only without it.
 * tok NULL: the byte-level vocabulary of the tiny presets (0 BOS, 1 EOS, bytes at 3..258). The
 * weights, the tokenizer and the backend must outlive the engine, and the backend is the
 * worker's alone while the engine lives (a backend computes one graph at a time). */
typedef struct ts_model_engine ts_model_engine;

typedef struct {
    int slots;           /* sequences decoded together (default 4) */
    int64_t max_len;     /* positions per sequence: prompt + output (default 1024) */
    int max_queue;       /* requests waiting for a slot (default 64) */
    int prefill_chunk;   /* prompt tokens per iteration (default 64) */
    bool prefix_cache;   /* reuse cached prefixes (default true) */
    int64_t pool_positions; /* a shared pool's size (0, the default: slots x max_len) */
    bool speculative;    /* MTP speculative decoding when one sequence decodes alone (default
                            false; a model without an MTP block is TS_ERR_UNSUPPORTED) */
    int checkpoints;     /* prefix checkpoint slots of a model that needs them (V4; each one
                            slot's fixed state): -1, the default, max(2, slots / 2); 0: none.
                            A model that forks any prefix (dense), or prefix_cache off: none */
} ts_model_engine_options;

ts_model_engine_options ts_model_engine_defaults(void);

ts_status ts_model_engine_new(const ts_model_weights *w, ts_tokenizer *tok, ts_backend *be,
                              const ts_model_engine_options *opt, ts_model_engine **out, char *err, size_t err_size);

/* Sizing from a memory budget of kv_bytes of decoder caches (measured on a one-slot decoder).
 * A shared pool (dense, V4): *slots = the most slots (at most max_slots, and one per block) whose
 * fixed per-slot state (V4's state cache; dense has none), with that of the checkpoint slots
 * options.checkpoints = `checkpoints` gives them, still leaves room for the blocks of one
 * sequence of max_len, *pool_positions = the whole blocks the rest holds - the pool, not the
 * slots, bounds the memory. Per-slot memory: *slots = how many sequences of max_len fit (at most
 * max_slots), *pool_positions = 0. *seq_bytes: the memory of one sequence of max_len.
 * TS_ERR_RANGE, with err saying what one sequence needs, when not even one fits. */
ts_status ts_model_engine_fit(const ts_model_weights *w, ts_backend *be, size_t kv_bytes, int64_t max_len, int max_slots,
                              int checkpoints, int *slots, int64_t *pool_positions, size_t *seq_bytes, char *err,
                              size_t err_size);
/* Stops the worker: running and queued requests end with TS_GEN_CANCELLED. */
void ts_model_engine_free(ts_model_engine *e);
/* The table to hand to ts_server_start (or to call directly). */
void ts_model_engine_table(ts_model_engine *e, ts_engine *out);

#ifdef __cplusplus
}
#endif
#endif
