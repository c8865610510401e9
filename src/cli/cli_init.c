/* cli_init.c - `tessera init`: writes a freshly initialised checkpoint (config.json +
 * model.safetensors, Hugging Face layout) for a preset or a config.json, deterministically from
 * --seed. The work is ts_model_init_write (src/model/init.c, which documents the init scheme);
 * this file parses the options, maps failures to exit codes (cli.h) and prints a summary. */
#include <string.h>

#include "cli/cli.h"
#include "tessera/model.h"

int cli_init_main(int argc, char **argv) {
    const char *model = NULL, *out = NULL, *dtype = "f32";
    uint64_t seed = 0;
    bool force = false;
    const cli_option options[] = {
        {"--model", CLI_OPT_STRING, &model, "CONFIG.json|PRESET",
         "the model to initialise (presets: tiny, small, flash, pro, dense-tiny, dense-small)", 0, 0},
        {"--seed", CLI_OPT_U64, &seed, "S", "random seed: the same seed writes byte-identical files", 0, 1.8446744073709552e19},
        {"--out", CLI_OPT_STRING, &out, "DIR", "output directory (created if missing; must be empty)", 0, 0},
        {"--dtype", CLI_OPT_STRING, &dtype, "f32|bf16", "storage dtype of the weights (mHC, sinks, biases stay f32)", 0, 0},
        {"--force", CLI_OPT_FLAG, &force, NULL, "write into a non-empty DIR, replacing the checkpoint files", 0, 0},
    };
    const cli_spec spec = {
        .command = "init",
        .summary = "Write a freshly initialised checkpoint: DIR/config.json and DIR/model.safetensors\n"
                   "(sharded above 4 GiB) with every tensor under its Hugging Face name.",
        .details = "Init: matrices N(0, 0.02^2), residual output projections (wo_b, w2) N(0, 0.02^2/(2L)),\n"
                   "RMSNorm weights 1, mHC as spec 2.3.5 (scale 0.01, base logit(1/n) | 0 | 0),\n"
                   "attention sinks, compressor ape and router bias 0, tid2eid a seeded hash table.\n"
                   "No tokenizer files are written yet.",
        .options = options,
        .n_options = (int)(sizeof options / sizeof options[0]),
    };
    int rc = cli_parse(&spec, argc, argv);
    if (rc != CLI_CONTINUE) return rc;
    if (!model) return cli_usage_error("init", "--model is required");
    if (!out || !*out) return cli_usage_error("init", "--out is required");
    ts_dtype storage;
    if (strcmp(dtype, "f32") == 0) storage = TS_F32;
    else if (strcmp(dtype, "bf16") == 0) storage = TS_BF16;
    else return cli_usage_error("init", "--dtype must be f32 or bf16 (got '%s')", dtype);

    ts_v4_config cfg, written;
    char msg[1024];
    if (ts_v4_config_resolve(model, &cfg, msg, sizeof msg) != TS_OK) return cli_usage_error("init", "--model: %s", msg);
    if (ts_model_init_config(&cfg, storage, &written, msg, sizeof msg) != TS_OK) {
        fprintf(stderr, "tessera init: %s\n", msg);
        return CLI_EXIT_FAILURE;
    }
    ts_model_param_counts counts;
    if (ts_model_count_params(&written, &counts) != TS_OK) {
        fprintf(stderr, "tessera init: cannot list the model's tensors\n");
        return CLI_EXIT_FAILURE;
    }
    if (ts_model_init_write(&cfg, seed, storage, out, force, msg, sizeof msg) != TS_OK) {
        fprintf(stderr, "tessera init: %s\n", msg);
        return CLI_EXIT_FAILURE;
    }
    printf("wrote %s: config.json + weights, %s %s, %lld tensors, %lld parameters, %s, seed %llu\n", out,
           ts_model_kind_name(written.kind), model, (long long)counts.n_tensors, (long long)counts.total, dtype,
           (unsigned long long)seed);
    if (written.vocab_size == 264)
        printf("note: no tokenizer files written; this vocabulary is spec 7.1's byte-level one\n"
               "      (0 BOS, 1 EOS, 2 PAD, 3..258 = bytes 0..255)\n");
    else
        printf("note: no tokenizer files written; put the model's tokenizer files in %s yourself\n", out);
    return CLI_EXIT_OK;
}
