/* cli_serve.c - `tessera serve --model DIR`: the OpenAI-compatible HTTP server (serve.h) over
 * the model engine (continuous batching on the incremental decoder, chunked prefill, prefix
 * cache). The KV cache is slots x context positions, or sized from a memory budget
 * (--kv-memory): the pool of blocks the sequences share (dense: the KV cache; V4: the compressed
 * entries, each slot owning its fixed state cache besides, and so does each V4 prefix checkpoint
 * (--checkpoints); --slots then only caps how many run at once); the chosen shape is printed, then "listening on http://HOST:PORT" once
 * it accepts connections; SIGTERM or SIGINT shuts it down gracefully (in-flight requests get a
 * few seconds to finish, the rest are cancelled), exit 0. */
#include <libgen.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "cli/cli.h"
#include "tessera/backend.h"
#include "tessera/serve.h"

#define DEFAULT_SLOTS 4
/* a step computes every running slot: a large budget should not silently mean a huge batch */
#define MAX_AUTO_SLOTS 64
#define STR(x) #x
#define XSTR(x) STR(x)

static int fail(const char *what, const char *detail) {
    fprintf(stderr, "tessera serve: %s%s%s\n", what, detail ? ": " : "", detail ? detail : "");
    return CLI_EXIT_FAILURE;
}

int cli_serve_main(int argc, char **argv) {
    const char *model = NULL, *dtype = "f32", *host = "127.0.0.1", *api_key = NULL, *model_name = NULL,
               *speculative = NULL;
    int port = 8080, max_concurrent = 16, slots = 0, context = 1024, threads = 0, max_queue = 64;
    int max_prompt = 0, max_output = 256, kv_memory = 0, prefill_chunk = 64, checkpoints = -1;
    bool no_prefix_cache = false;
    float timeout = 600, grace = 5;
    const cli_option options[] = {
        {"--model", CLI_OPT_STRING, &model, "DIR", "checkpoint directory (config.json + model.safetensors [+ tokenizer.json])", 0, 0},
        {"--dtype", CLI_OPT_STRING, &dtype, "T", CLI_DTYPE_HELP, 0, 0},
        {"--host", CLI_OPT_STRING, &host, "H", "address to listen on", 0, 0},
        {"--port", CLI_OPT_INT, &port, "P", "port (0: any free port)", 0, 65535},
        {"--api-key", CLI_OPT_STRING, &api_key, "K", "require 'Authorization: Bearer K' on /v1/", 0, 0},
        {"--model-name", CLI_OPT_STRING, &model_name, "NAME", "model id in the API (default: the directory's name)", 0, 0},
        {"--max-concurrent", CLI_OPT_INT, &max_concurrent, "N", "requests in flight at once (one more: HTTP 429)", 1, 1 << 16},
        {"--slots", CLI_OPT_INT, &slots, "N",
         "sequences decoded together (0: " XSTR(DEFAULT_SLOTS) ", or with --kv-memory up to " XSTR(MAX_AUTO_SLOTS) " as memory allows)", 0, 1024},
        {"--context", CLI_OPT_INT, &context, "T", "positions per sequence (prompt + output)", 2, 1 << 24},
        {"--kv-memory", CLI_OPT_INT, &kv_memory, "MIB",
         "KV-cache budget: the slots' fixed state (V4) and the pool of blocks the sequences share, at most --slots "
         "sequences; a request waits while it is full (0: slots x context)", 0, 1 << 24},
        {"--prefill-chunk", CLI_OPT_INT, &prefill_chunk, "N", "prompt tokens per iteration, in the pass of the decode steps", 1, 1 << 16},
        {"--speculative", CLI_OPT_STRING, &speculative, "mtp",
         "speculative decoding with the MTP block as the draft while one sequence decodes alone", 0, 0},
        {"--no-prefix-cache", CLI_OPT_FLAG, &no_prefix_cache, NULL, "do not reuse finished sequences' caches for shared prompt prefixes", 0, 0},
        {"--checkpoints", CLI_OPT_INT, &checkpoints, "N",
         "prefix checkpoints of a model whose caches rewind only a few tokens (V4): extra slots of fixed state keeping "
         "a sequence at a block boundary for later prompts sharing it (-1: max(2, slots / 2); 0: none)", -1, 1024},
        {"--max-queue", CLI_OPT_INT, &max_queue, "N", "requests waiting for a slot (more: HTTP 503)", 1, 1 << 20},
        {"--max-prompt-tokens", CLI_OPT_INT, &max_prompt, "N", "longest prompt (0: context - 1)", 0, 1 << 24},
        {"--max-output-tokens", CLI_OPT_INT, &max_output, "N", "largest max_tokens, and its default", 1, 1 << 24},
        {"--timeout", CLI_OPT_FLOAT, &timeout, "S", "per-request time limit in seconds (0: none)", 0, 1e7},
        {"--grace", CLI_OPT_FLOAT, &grace, "S", "on SIGTERM, seconds in-flight requests may still run", 0, 3600},
        {"--threads", CLI_OPT_INT, &threads, "N", "compute threads (0: every core)", 0, 1024},
    };
    const cli_spec spec = {"serve", "Serve a model over HTTP with an OpenAI-compatible API.",
                           "Endpoints: POST /v1/completions, POST /v1/chat/completions (\"stream\": true for SSE),\n"
                           "GET /v1/models, /health, /metrics (Prometheus), / (a chat page).",
                           options, (int)(sizeof options / sizeof *options)};
    int rc = cli_parse(&spec, argc, argv);
    if (rc != CLI_CONTINUE) return rc;
    if (!model) return cli_usage_error("serve", "--model DIR is required");
    if (speculative && strcmp(speculative, "mtp") != 0)
        return cli_usage_error("serve", "--speculative %s: the only draft is mtp", speculative);
    ts_dtype matmul_dtype;
    if ((rc = cli_matmul_dtype("serve", dtype, &matmul_dtype)) != CLI_CONTINUE) return rc;
    rc = 0;

    /* SIGTERM / SIGINT are taken synchronously below, so block them before any thread starts */
    sigset_t sigs;
    sigemptyset(&sigs);
    sigaddset(&sigs, SIGTERM);
    sigaddset(&sigs, SIGINT);
    pthread_sigmask(SIG_BLOCK, &sigs, NULL);
    signal(SIGPIPE, SIG_IGN);

    char err[512] = "", name[512];
    ts_model_weights *w = NULL;
    if (ts_model_load_for_inference(model, matmul_dtype, &w, err, sizeof err) != TS_OK) return fail(err, NULL);
    ts_tokenizer *tok = NULL;
    char tok_path[1200];
    struct stat sb;
    snprintf(tok_path, sizeof tok_path, "%s/tokenizer.json", model);
    ts_io_error ioe;
    if (stat(tok_path, &sb) == 0 && ts_tokenizer_load(model, &tok, &ioe) != TS_OK) rc = fail("loading the tokenizer", ioe.message);
    ts_backend *be = NULL;
    ts_model_engine *engine = NULL;
    if (rc == 0 && ts_backend_cpu_new(threads, &be) != TS_OK) rc = fail("cannot create the CPU backend", NULL);
    ts_model_engine_options eo = ts_model_engine_defaults();
    eo.slots = slots ? slots : DEFAULT_SLOTS;
    eo.max_len = context;
    eo.max_queue = max_queue;
    eo.prefill_chunk = prefill_chunk;
    eo.prefix_cache = !no_prefix_cache;
    eo.speculative = speculative != NULL;
    eo.checkpoints = checkpoints;
    if (rc == 0 && kv_memory > 0 &&
        ts_model_engine_fit(w, be, (size_t)kv_memory << 20, context, slots ? slots : MAX_AUTO_SLOTS,
                            eo.prefix_cache ? checkpoints : 0, &eo.slots, &eo.pool_positions, NULL, err, sizeof err) != TS_OK)
        rc = fail(err, NULL);
    if (rc == 0 && ts_model_engine_new(w, tok, be, &eo, &engine, err, sizeof err) != TS_OK) rc = fail(err, NULL);
    ts_chat_template tmpl; /* the model's own chat template (serve.h), else the default */
    if (rc == 0 && ts_chat_template_load(model, &tmpl, err, sizeof err) != TS_OK) rc = fail(err, NULL);
    else if (rc == 0 && tmpl.note[0]) fprintf(stderr, "tessera serve: %s\n", tmpl.note);
    ts_server *srv = NULL;
    if (rc == 0) {
        snprintf(name, sizeof name, "%s", model);
        size_t n = strlen(name);
        while (n > 1 && name[n - 1] == '/') name[--n] = '\0';
        ts_server_options o = ts_server_defaults();
        o.host = host;
        o.port = port;
        o.model_name = model_name ? model_name : basename(name);
        o.api_key = api_key;
        o.max_concurrent = max_concurrent;
        o.max_prompt_tokens = max_prompt > 0 ? max_prompt : context - 1;
        o.max_output_tokens = max_output;
        o.request_timeout_s = timeout;
        o.chat_template = ts_chat_template_render;
        o.chat_template_user = &tmpl;
        o.chat_end_of_turn = ts_chat_template_end_of_turn(&tmpl);
        ts_engine table;
        ts_model_engine_table(engine, &table);
        if (ts_server_start(&o, &table, &srv, &ioe) != TS_OK) rc = fail(ioe.message, NULL);
        else {
            ts_engine_stats es;
            table.stats(table.self, &es);
            printf("serving %s (%s) with %d slots of %d positions: KV cache %.2f MiB", o.model_name, model, eo.slots,
                   context, (double)es.kv_bytes / (1 << 20));
            if (es.kv_positions_capacity != (int64_t)eo.slots * context)
                printf(" (a pool of %lld positions they share)", (long long)es.kv_positions_capacity);
            if (kv_memory > 0) printf(" (budget %d MiB)", kv_memory);
            printf(", prefill chunks of %d, prefix cache %s%s\nlistening on http://%s:%d\n", prefill_chunk,
                   eo.prefix_cache ? "on" : "off", eo.speculative ? ", speculative decoding (mtp)" : "", host,
                   ts_server_port(srv));
            fflush(stdout);
        }
    }
    if (rc == 0) {
        int sig = 0;
        sigwait(&sigs, &sig);
        fprintf(stderr, "tessera serve: %s: shutting down\n", sig == SIGTERM ? "SIGTERM" : "SIGINT");
        ts_server_shutdown(srv, grace);
    }
    ts_model_engine_free(engine);
    ts_backend_free(be);
    ts_tokenizer_free(tok);
    ts_model_weights_free(w);
    return rc;
}
