/* cli_generate.c - `tessera generate --model DIR --prompt TEXT`: loads a checkpoint, encodes the
 * prompt (the directory's tokenizer.json, else the byte-level vocabulary of the tiny presets),
 * feeds it to the incremental decoder (ts_model_decoder, any model kind) in one extend call
 * and streams the continuation to standard output token by token; prompt and generation speeds
 * go to standard error.
 * Sampling (the sampler of infer.h): greedy at temperature 0, else softmax sampling at the given
 * temperature after the penalties, top-k, top-p and min-p, with a seeded generator (same seed ->
 * same text). --speculative mtp: the MTP block drafts a token per round (ts_speculator, model.h) -
 * the same text as plain decoding when greedy, the same distribution when sampling; the
 * acceptance rate joins the timings. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "cli/cli.h"
#include "tessera/backend.h"
#include "tessera/data.h"
#include "tessera/infer.h"
#include "tessera/model.h"
#include "tessera/tokenizer.h"

typedef struct {
    ts_tokenizer *tok; /* NULL: byte-level vocabulary */
    int32_t bos, eos; /* eos -1: never stop */
} text_codec;

static double seconds_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static int fail(const char *what, const char *detail) {
    fprintf(stderr, "tessera generate: %s%s%s\n", what, detail ? ": " : "", detail ? detail : "");
    return CLI_EXIT_FAILURE;
}

static int open_codec(const char *model, int64_t vocab, text_codec *tc) {
    char path[1200];
    struct stat sb;
    snprintf(path, sizeof path, "%s/tokenizer.json", model);
    tc->tok = NULL;
    if (stat(path, &sb) == 0) {
        ts_io_error ioe;
        if (ts_tokenizer_load(model, &tc->tok, &ioe) != TS_OK) return fail("loading the tokenizer", ioe.message);
        tc->bos = ts_tokenizer_bos_id(tc->tok);
        tc->eos = ts_tokenizer_eos_id(tc->tok);
        return 0;
    }
    if (vocab < TS_BYTE_OFFSET + 256) return fail("no tokenizer.json beside the model, and its vocabulary is not byte-level", NULL);
    tc->bos = TS_BYTE_BOS;
    tc->eos = TS_BYTE_EOS;
    return 0;
}

static int encode(const text_codec *tc, const char *text, ts_token_ids *ids) {
    size_t n = strlen(text);
    if (tc->tok) {
        ts_io_error ioe;
        unsigned flags = TS_TOKENIZE_DEFAULT | (tc->bos >= 0 ? TS_TOKENIZE_ADD_BOS : 0);
        if (ts_tokenizer_encode(tc->tok, text, n, flags, ids, &ioe) != TS_OK) return fail("encoding the prompt", ioe.message);
        return 0;
    }
    ids->ids = malloc((n + 1) * sizeof(int32_t));
    if (!ids->ids) return fail("out of memory", NULL);
    ids->ids[0] = TS_BYTE_BOS;
    for (size_t i = 0; i < n; i++) ids->ids[i + 1] = (uint8_t)text[i] + TS_BYTE_OFFSET;
    ids->n = ids->cap = n + 1;
    return 0;
}

/* The bytes of one generated id (specials print nothing). */
static void emit(const text_codec *tc, int32_t id) {
    size_t n = 0;
    if (tc->tok) {
        const uint8_t *b = ts_tokenizer_is_special(tc->tok, id) ? NULL : ts_tokenizer_id_to_bytes(tc->tok, id, &n);
        if (b) fwrite(b, 1, n, stdout);
    } else if (id >= TS_BYTE_OFFSET && id < TS_BYTE_OFFSET + 256) {
        fputc(id - TS_BYTE_OFFSET, stdout);
    }
    fflush(stdout);
}

/* Prefill, then up to max_tokens tokens streamed out: each round feeds the last chosen token and
 * yields the next (plain) or one or two more (speculative); timings and stats to stderr. */
static int generate(ts_model_decoder *dec, ts_speculator *sp, ts_sampler *smp, const ts_sampling_params *sampling,
                    const text_codec *tc, const ts_token_ids *ids, const char *prompt, int max_tokens, float *logits) {
    int slot = 0, n_queue = 0, generated = 0;
    int32_t queue[2] = {0, 0};
    double t0 = seconds_now();
    ts_status s = ts_sampler_start(smp, sampling, ids->ids, ids->n);
    if (s == TS_OK)
        s = sp ? ts_speculator_prefill(sp, slot, ids->ids, (int64_t)ids->n, logits)
               : ts_model_decoder_extend(dec, slot, ids->ids, (int64_t)ids->n, logits, 1);
    double t1 = seconds_now();
    if (s == TS_OK) s = ts_sampler_sample(smp, logits, &queue[n_queue++], NULL);
    fputs(prompt, stdout);
    while (s == TS_OK && n_queue > 0 && generated < max_tokens) {
        int32_t next = queue[0];
        queue[0] = queue[1];
        if (next == tc->eos) break;
        emit(tc, next);
        generated++;
        if (--n_queue > 0 || generated == max_tokens) continue;
        if (sp) s = ts_speculator_step(sp, slot, smp, next, queue, &n_queue);
        else if ((s = ts_model_decoder_step(dec, 1, &slot, &next, logits)) == TS_OK)
            s = ts_sampler_sample(smp, logits, &queue[n_queue++], NULL);
    }
    double t2 = seconds_now();
    fputc('\n', stdout);
    fprintf(stderr, "prompt: %zu tokens in %.3f s (%.1f tokens/s); generation: %d tokens in %.3f s (%.1f tokens/s)\n",
            ids->n, t1 - t0, (double)ids->n / (t1 - t0), generated, t2 - t1, generated / (t2 - t1 > 0 ? t2 - t1 : 1));
    if (sp) {
        int64_t drafted, accepted;
        ts_speculator_stats(sp, &drafted, &accepted);
        fprintf(stderr, "speculative (mtp): %lld drafts, %lld accepted (acceptance rate %.1f%%)\n", (long long)drafted,
                (long long)accepted, drafted ? 100.0 * (double)accepted / (double)drafted : 0.0);
    }
    return s == TS_OK ? 0 : fail("decoding failed", ts_status_name(s));
}

int cli_generate_main(int argc, char **argv) {
    const char *model = NULL, *prompt = "", *speculative = NULL, *dtype = "f32";
    int max_tokens = 64, threads = 0;
    bool ignore_eos = false;
    float draft_min_prob = 0;
    ts_sampling_params sampling = ts_sampling_defaults();
    sampling.temperature = 0;
    const cli_option options[] = {
        {"--model", CLI_OPT_STRING, &model, "DIR", "checkpoint directory (config.json + model.safetensors [+ tokenizer.json])", 0, 0},
        {"--dtype", CLI_OPT_STRING, &dtype, "T", CLI_DTYPE_HELP, 0, 0},
        {"--prompt", CLI_OPT_STRING, &prompt, "TEXT", "the text to continue", 0, 0},
        {"--max-tokens", CLI_OPT_INT, &max_tokens, "N", "tokens to generate at most", 1, 1 << 20},
        CLI_SAMPLING_OPTIONS(sampling),
        {"--seed", CLI_OPT_U64, &sampling.seed, "S", "sampling seed (same seed, same text)", 0, 0},
        {"--speculative", CLI_OPT_STRING, &speculative, "mtp", "speculative decoding with the MTP block as the draft", 0, 0},
        {"--draft-min-prob", CLI_OPT_FLOAT, &draft_min_prob, "P",
         "with --speculative: draft only when the MTP block's top token has probability >= P", 0, 1},
        {"--ignore-eos", CLI_OPT_FLAG, &ignore_eos, NULL, "keep generating past the end-of-sequence token (benchmarks)", 0, 0},
        {"--threads", CLI_OPT_INT, &threads, "N", "compute threads (0: every core)", 0, 1024},
    };
    const cli_spec spec = {"generate", "Continue a prompt with a trained model, streaming the text to standard output.",
                           "Timings (prompt and generation tokens/s) are printed to standard error. Generation stops at\n"
                           "the end-of-sequence token or after --max-tokens. --speculative mtp (DeepSeek-V4 checkpoints\n"
                           "with an MTP block): the MTP block drafts one token per step and the model checks it in the\n"
                           "same pass - greedy text unchanged, sampling from the same distribution; the acceptance rate\n"
                           "joins the timings.",
                           options, (int)(sizeof options / sizeof *options)};
    int rc = cli_parse(&spec, argc, argv);
    if (rc != CLI_CONTINUE) return rc;
    if (!model) return cli_usage_error("generate", "--model DIR is required");
    if (speculative && strcmp(speculative, "mtp") != 0)
        return cli_usage_error("generate", "--speculative %s: the only draft is mtp", speculative);
    const char *bad = ts_sampling_params_check(&sampling, NULL);
    if (bad) return cli_usage_error("generate", "%s", bad);
    ts_dtype matmul_dtype;
    if ((rc = cli_matmul_dtype("generate", dtype, &matmul_dtype)) != CLI_CONTINUE) return rc;

    char err[512] = "";
    ts_model_weights *w = NULL;
    if (ts_model_load_for_inference(model, matmul_dtype, &w, err, sizeof err) != TS_OK) return fail(err, NULL);
    const ts_v4_config *c = ts_model_weights_config(w);
    text_codec tc;
    ts_token_ids ids = {0};
    rc = open_codec(model, c->vocab_size, &tc);
    if (ignore_eos) tc.eos = -1;
    if (rc == 0) rc = encode(&tc, prompt, &ids);
    if (rc == 0 && ids.n == 0) rc = fail("the prompt encodes to no token (give a --prompt)", NULL);
    ts_backend *be = NULL;
    ts_model_decoder *dec = NULL;
    ts_speculator *sp = NULL;
    ts_sampler *smp = NULL;
    float *logits = malloc((size_t)c->vocab_size * sizeof(float));
    if (rc == 0 && (!logits || ts_backend_cpu_new(threads, &be) != TS_OK ||
                    ts_sampler_new((int32_t)c->vocab_size, &smp) != TS_OK))
        rc = fail("out of memory", NULL);
    if (rc == 0 && ts_model_decoder_new(w, be, 1, (int64_t)ids.n + max_tokens, &dec, err, sizeof err) != TS_OK)
        rc = fail(err, NULL);
    if (rc == 0 && speculative && ts_speculator_new(w, dec, &sp, err, sizeof err) != TS_OK) rc = fail(err, NULL);
    if (sp) ts_speculator_set_min_prob(sp, draft_min_prob);
    if (rc == 0) rc = generate(dec, sp, smp, &sampling, &tc, &ids, prompt, max_tokens, logits);
    ts_speculator_free(sp);
    ts_sampler_free(smp);
    ts_model_decoder_free(dec);
    ts_backend_free(be);
    free(logits);
    free(ids.ids);
    ts_tokenizer_free(tc.tok);
    ts_model_weights_free(w);
    return rc;
}
