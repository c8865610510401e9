/* cli_train.c - `tessera train`, the project's main job: with no arguments it trains the tiny
 * DeepSeek-V4 preset on the embedded synthetic dataset (generated into the run directory) and
 * shows it learn: the loss against the data's unigram entropy, validation loss, exact-answer
 * accuracy on held-out tasks, and greedy samples. The step itself is ts_trainer_step
 * (src/train/trainer.c); this file wires data, model, evaluation and the run directory:
 *   runs/<timestamp>/  metrics.jsonl, final/ (config.json + model.safetensors), data/ (shards). */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "cli/cli.h"
#include "tessera/backend.h"
#include "tessera/train.h"

typedef struct {
    const char *model, *data, *out;
    int steps, batch, seq, threads, eval_every, eval_batches, eval_per_task, log_every;
    float lr;
    uint64_t seed;
    const char *precision, *optimizer;
    bool no_mtp;
} train_args;

typedef struct {
    train_args a;
    char run_dir[1024], data_dir[1100];
    ts_model_weights *w;
    ts_backend *be;
    ts_data_loader *train, *val;
    ts_trainer *tr;
    FILE *metrics;
    double unigram_bits;
} run;

static int fail(const char *fmt, const char *detail) {
    fprintf(stderr, "tessera train: ");
    fprintf(stderr, fmt, detail);
    fputc('\n', stderr);
    return CLI_EXIT_FAILURE;
}

/* ---------------------------------------------------------------- set-up */

static int make_dir(const char *path) {
    if (mkdir(path, 0777) == 0 || errno == EEXIST) return 0;
    return -1;
}

/* runs/<YYYYmmdd-HHMMSS> (suffix -2, -3 ... when taken), or --out. */
static int make_run_dir(run *r) {
    if (r->a.out) {
        snprintf(r->run_dir, sizeof r->run_dir, "%s", r->a.out);
        if (make_dir(r->run_dir) != 0) return fail("cannot create the output directory %s", r->run_dir);
    } else {
        if (make_dir("runs") != 0) return fail("cannot create %s", "runs/");
        char stamp[32];
        time_t now = time(NULL);
        strftime(stamp, sizeof stamp, "%Y%m%d-%H%M%S", localtime(&now));
        snprintf(r->run_dir, sizeof r->run_dir, "runs/%s", stamp);
        for (int k = 2; mkdir(r->run_dir, 0777) != 0; k++) {
            if (errno != EEXIST || k > 99) return fail("cannot create a run directory under %s", "runs/");
            snprintf(r->run_dir, sizeof r->run_dir, "runs/%s-%d", stamp, k);
        }
    }
    if (access(r->run_dir, W_OK) != 0) return fail("cannot write to %s", r->run_dir);
    return 0;
}

/* The data: --data DIR with train-*.tshard / val-*.tshard, or the embedded synthetic set. */
static int open_data(run *r) {
    ts_io_error ioe;
    if (r->a.data) {
        snprintf(r->data_dir, sizeof r->data_dir, "%s", r->a.data);
    } else {
        snprintf(r->data_dir, sizeof r->data_dir, "%s/data", r->run_dir);
        ts_synth_options so;
        ts_synth_default_options(&so);
        so.seed = r->a.seed;
        ts_synth_stats ss;
        if (ts_synth_write_shards(r->data_dir, &so, &ss, &ioe) != TS_OK) return fail("%s", ioe.message);
        r->unigram_bits = ss.unigram_bits;
        printf("data:     embedded synthetic tasks (copy, reverse, sort, count, recall, add, sub): %llu training\n"
               "          documents (%llu tokens), %llu held out; unigram entropy %.3f bits/token\n",
               (unsigned long long)ss.train_docs, (unsigned long long)ss.train_tokens,
               (unsigned long long)ss.val_docs, ss.unigram_bits);
    }
    char **paths = NULL;
    size_t n = 0;
    ts_data_loader_options lo;
    ts_data_loader_default_options(&lo, r->a.batch, r->a.seq, r->a.seed);
    if (ts_shard_list(r->data_dir, "train", &paths, &n, &ioe) != TS_OK) return fail("%s", ioe.message);
    ts_status s = ts_data_loader_open((const char *const *)paths, n, &lo, &r->train, &ioe);
    for (size_t i = 0; i < n; i++) free(paths[i]);
    free(paths);
    if (s != TS_OK) return fail("%s", ioe.message);
    if (ts_shard_list(r->data_dir, "val", &paths, &n, &ioe) == TS_OK && n > 0) {
        lo.single_pass = true;
        s = ts_data_loader_open((const char *const *)paths, n, &lo, &r->val, &ioe);
        for (size_t i = 0; i < n; i++) free(paths[i]);
        free(paths);
        if (s != TS_OK) return fail("%s", ioe.message);
    }
    return 0;
}

static int load_model(run *r) {
    char err[512] = "";
    ts_v4_config cfg;
    struct stat sb;
    bool checkpoint = stat(r->a.model, &sb) == 0 && S_ISDIR(sb.st_mode);
    ts_status s = checkpoint ? ts_model_load(r->a.model, TS_F32, &r->w, err, sizeof err)
                             : ts_v4_config_resolve(r->a.model, &cfg, err, sizeof err);
    if (s == TS_OK && !checkpoint) {
        s = ts_model_weights_new(&cfg, TS_F32, &r->w, err, sizeof err);
        if (s == TS_OK) s = ts_model_weights_init(r->w, r->a.seed, err, sizeof err);
    }
    if (s != TS_OK) return fail("%s", err);
    const ts_v4_config *c = ts_model_weights_config(r->w);
    if (ts_data_loader_vocab_size(r->train) > (uint32_t)c->vocab_size) {
        snprintf(err, sizeof err, "the data's vocabulary (%u ids) does not fit the model's %lld",
                 ts_data_loader_vocab_size(r->train), (long long)c->vocab_size);
        return fail("%s", err);
    }
    ts_model_param_counts pc;
    ts_model_count_params(c, &pc);
    printf("model:    %s %s%s: %.2f M parameters (%.2f M active per token), %lld layers, hidden %lld\n",
           ts_model_kind_name(c->kind), r->a.model, checkpoint ? " (checkpoint)" : " (initialised)",
           (double)pc.total / 1e6, (double)pc.active / 1e6, (long long)c->num_hidden_layers,
           (long long)c->hidden_size);
    return 0;
}

static int make_trainer(run *r) {
    char err[512] = "";
    if (ts_backend_cpu_new(r->a.threads, &r->be) != TS_OK) return fail("%s", "cannot create the CPU backend");
    ts_trainer_options o;
    ts_trainer_default_options(&o, r->a.batch, r->a.seq, r->a.steps);
    o.lr.peak_lr = r->a.lr;
    o.lr.final_lr = r->a.lr * 0.1;
    o.lr.warmup_steps = r->a.steps / 10 < 100 ? r->a.steps / 10 : 100;
    o.adamw_only = strcmp(r->a.optimizer, "adamw") == 0;
    o.mtp = !r->a.no_mtp;
    ts_status s = ts_trainer_new(r->w, r->train, r->be, &o, &r->tr, err, sizeof err);
    if (s != TS_OK) return fail("%s", err);
    ts_plan_stats ps = ts_trainer_plan_stats(r->tr);
    printf("training: %d steps of %d x %d tokens, %s, peak lr %g (warm-up %lld, cosine decay over the last 20 %%),\n"
           "          MTP %s, indexer dense for the first %lld steps; graph memory %.1f MiB planned (%.1f MiB unplanned)\n",
           r->a.steps, r->a.batch, r->a.seq, o.adamw_only ? "AdamW" : "Muon + AdamW", (double)o.lr.peak_lr,
           (long long)o.lr.warmup_steps, o.mtp ? "on (weight 0.3 -> 0.1)" : "off", (long long)o.indexer_warmup,
           (double)ps.arena_bytes / 1048576.0, (double)ps.naive_bytes / 1048576.0);
    return 0;
}

/* ---------------------------------------------------------------- evaluation */

static int eval_loss(run *r, double *loss) {
    *loss = NAN;
    if (!r->val) return 0;
    char err[512] = "";
    if (ts_trainer_eval(r->tr, r->val, r->a.eval_batches, loss, err, sizeof err) != TS_OK) return fail("%s", err);
    return 0;
}

/* Exact-answer accuracy on held-out synthetic tasks and a few greedy samples. */
static int eval_tasks(run *r) {
    int n = r->a.eval_per_task;
    if (r->a.data || n <= 0) return 0;
    char err[512] = "";
    ts_model_completer *c = NULL;
    if (ts_model_completer_new(r->w, r->be, n * TS_SYNTH_TASK_COUNT, 64, &c, err, sizeof err) != TS_OK)
        return fail("%s", err);
    ts_synth_eval ev;
    ts_io_error ioe;
    ts_status s = ts_synth_evaluate_model(r->a.seed, n, c, &ev, &ioe);
    ts_model_completer_free(c);
    if (s != TS_OK) return fail("%s", ioe.message);
    printf("held-out tasks (exact answer, %d per task):", n);
    for (int t = 0; t < TS_SYNTH_TASK_COUNT; t++)
        printf(" %s %.0f%%", ts_synth_task_name((ts_synth_task)t), 100 * ev.accuracy[t]);
    printf("; overall %.1f%%\n", 100 * ev.overall);
    if (r->metrics) {
        fprintf(r->metrics, "{\"step\": %lld, \"task_accuracy\": %.4f", (long long)ts_trainer_step_count(r->tr),
                ev.overall);
        for (int t = 0; t < TS_SYNTH_TASK_COUNT; t++)
            fprintf(r->metrics, ", \"acc_%s\": %.4f", ts_synth_task_name((ts_synth_task)t), ev.accuracy[t]);
        fprintf(r->metrics, "}\n");
        fflush(r->metrics);
    }
    return 0;
}

/* A few held-out prompts completed greedily, printed as prompt => answer (expected). */
static int print_samples(run *r) {
    if (r->a.data) return 0;
    enum { N = TS_SYNTH_TASK_COUNT };
    char err[512] = "";
    ts_model_completer *c = NULL;
    if (ts_model_completer_new(r->w, r->be, N, 64, &c, err, sizeof err) != TS_OK) return fail("%s", err);
    ts_synth_item items[N];
    ts_synth_generate(r->a.seed + 99, TS_SYNTH_VAL, N, items);
    int32_t prompt[N][TS_SYNTH_TEXT_MAX + 1], out[N][TS_SYNTH_ANSWER_CAP], *outs[N];
    const int32_t *prompts[N];
    int64_t lens[N], out_lens[N];
    for (int i = 0; i < N; i++) {
        prompt[i][0] = TS_BYTE_BOS;
        for (int k = 0; k < items[i].prompt_len; k++) prompt[i][k + 1] = (uint8_t)items[i].text[k] + TS_BYTE_OFFSET;
        prompts[i] = prompt[i];
        lens[i] = items[i].prompt_len + 1;
        outs[i] = out[i];
    }
    ts_status s = ts_model_complete(c, N, prompts, lens, TS_SYNTH_ANSWER_CAP, TS_BYTE_EOS, TS_BYTE_PAD, outs, out_lens);
    ts_model_completer_free(c);
    if (s != TS_OK) return fail("%s", ts_status_name(s));
    printf("samples (greedy):\n");
    for (int i = 0; i < N; i++) {
        char text[TS_SYNTH_ANSWER_CAP + 1];
        ts_byte_decode(out[i], (size_t)out_lens[i], text, sizeof text);
        const ts_synth_item *it = &items[i];
        bool ok = strcmp(text, it->text + it->prompt_len) == 0;
        printf("  %-36.*s => %-14s %s %s\n", it->prompt_len, it->text, text, ok ? "ok " : "want",
               ok ? "" : it->text + it->prompt_len);
    }
    return 0;
}

/* ---------------------------------------------------------------- the loop */

static void log_step(run *r, const ts_train_step_stats *st, double tok_s, double val_loss) {
    fprintf(r->metrics,
            "{\"step\": %lld, \"loss\": %.6f, \"lm_loss\": %.6f, \"mtp_loss\": %.6f, \"balance_loss\": %.6g, "
            "\"indexer_loss\": %.6f, \"lr\": %.6g, \"grad_norm\": %.4f, \"tokens_per_s\": %.1f, \"seconds\": %.4f",
            (long long)st->step, st->loss, st->lm_loss, st->mtp_loss, st->balance_loss, st->indexer_loss, st->lr,
            st->grad_norm, tok_s, st->seconds);
    if (!isnan(val_loss)) fprintf(r->metrics, ", \"val_loss\": %.6f", val_loss);
    fprintf(r->metrics, "}\n");
    fflush(r->metrics);
}

static int train_loop(run *r) {
    char err[512] = "", path[1200];
    snprintf(path, sizeof path, "%s/metrics.jsonl", r->run_dir);
    r->metrics = fopen(path, "w");
    if (!r->metrics) return fail("cannot write %s", path);
    double first = NAN, recent = 0, last_mean = NAN, tokens = 0, seconds = 0;
    int window = 0;
    for (int i = 0; i < r->a.steps; i++) {
        ts_train_step_stats st;
        if (ts_trainer_step(r->tr, &st, err, sizeof err) != TS_OK) return fail("%s", err);
        tokens += (double)st.tokens;
        seconds += st.seconds;
        if (isnan(first)) first = st.lm_loss;
        recent += st.lm_loss;
        window++;
        double val = NAN;
        bool eval = r->a.eval_every > 0 && ((i + 1) % r->a.eval_every == 0 || i + 1 == r->a.steps);
        if (eval && eval_loss(r, &val) != 0) return CLI_EXIT_FAILURE;
        log_step(r, &st, (double)st.tokens / st.seconds, val);
        if ((i + 1) % r->a.log_every == 0 || i == 0 || eval) {
            double mean = recent / window, eta = seconds / (i + 1) * (r->a.steps - i - 1);
            printf("step %5d/%d  loss %.4f (%.3f bits)  lr %.2e  %6.0f tok/s  ETA %4.0fs%s", i + 1, r->a.steps, mean,
                   mean / log(2.0), st.lr, tokens / seconds, eta, st.skipped ? "  (skipped: non-finite gradient)" : "");
            if (!isnan(val)) printf("  val %.4f (%.3f bits)", val, val / log(2.0));
            printf("\n");
            fflush(stdout);
            last_mean = mean;
            recent = 0;
            window = 0;
        }
    }
    printf("time:     %.1f s of training, %.0f tokens/s; LM loss %.3f -> %.3f bits/token (first step -> last log line)",
           seconds, tokens / seconds,
           first / log(2.0), last_mean / log(2.0));
    if (r->unigram_bits > 0) printf(" (unigram entropy of the data %.3f)", r->unigram_bits);
    printf("\n");
    return 0;
}

static int save_final(run *r) {
    char err[512] = "", path[1200];
    snprintf(path, sizeof path, "%s/final", r->run_dir);
    if (ts_model_save(r->w, path, TS_F32, true, err, sizeof err) != TS_OK) return fail("%s", err);
    printf("saved:    %s (config.json + model.safetensors), metrics in %s/metrics.jsonl\n", path, r->run_dir);
    return 0;
}

static void run_free(run *r) {
    if (r->metrics) fclose(r->metrics);
    ts_trainer_free(r->tr);
    ts_data_loader_free(r->train);
    ts_data_loader_free(r->val);
    ts_backend_free(r->be);
    ts_model_weights_free(r->w);
}

int cli_train_main(int argc, char **argv) {
    run r;
    memset(&r, 0, sizeof r);
    train_args *a = &r.a;
    *a = (train_args){.model = "tiny", .steps = 200, .batch = 4, .seq = 128, .threads = 0, .eval_every = 50,
                      .eval_batches = 4, .eval_per_task = 4, .log_every = 10, .lr = 2e-3f, .seed = 1,
                      .precision = "f32", .optimizer = "muon"};
    const cli_option options[] = {
        {"--model", CLI_OPT_STRING, &a->model, "CONFIG.json|PRESET|DIR", "model: a preset, a config.json, or a checkpoint to continue from", 0, 0},
        {"--data", CLI_OPT_STRING, &a->data, "DIR", "token shards (train-*.tshard, val-*.tshard; see 'tessera data prepare'); default: the embedded synthetic tasks", 0, 0},
        {"--steps", CLI_OPT_INT, &a->steps, "N", "optimizer steps", 1, 1e9},
        {"--batch", CLI_OPT_INT, &a->batch, "B", "sequences per step", 1, 4096},
        {"--seq", CLI_OPT_INT, &a->seq, "T", "tokens per sequence", 2, 1 << 20},
        {"--lr", CLI_OPT_FLOAT, &a->lr, "X", "peak learning rate", 0, 10},
        {"--optimizer", CLI_OPT_STRING, &a->optimizer, "muon|adamw", "Muon for matrices + AdamW (spec 5.3), or AdamW only", 0, 0},
        {"--no-mtp", CLI_OPT_FLAG, &a->no_mtp, NULL, "do not train the MTP block", 0, 0},
        {"--threads", CLI_OPT_INT, &a->threads, "N", "compute threads (0: every core)", 0, 1024},
        {"--precision", CLI_OPT_STRING, &a->precision, "f32|bf16", "compute precision", 0, 0},
        {"--seed", CLI_OPT_U64, &a->seed, "S", "seed of the initial weights, the data order and the synthetic data", 0, 0},
        {"--eval-every", CLI_OPT_INT, &a->eval_every, "N", "validation loss every N steps (0: never)", 0, 1e9},
        {"--eval-batches", CLI_OPT_INT, &a->eval_batches, "N", "validation batches per evaluation", 1, 1e6},
        {"--eval-tasks", CLI_OPT_INT, &a->eval_per_task, "N", "held-out items per synthetic task scored at the end (0: skip)", 0, 1000},
        {"--log-every", CLI_OPT_INT, &a->log_every, "N", "print a progress line every N steps", 1, 1e9},
        {"--out", CLI_OPT_STRING, &a->out, "DIR", "run directory (default: runs/<timestamp>)", 0, 0},
    };
    const cli_spec spec = {
        "train", "Train a DeepSeek-V4 (or dense) model. With no options: the tiny V4 preset on the embedded synthetic tasks.",
        "The run directory receives metrics.jsonl (one JSON object per step: step, loss, lr, tokens_per_s,\n"
        "and val_loss at evaluations), the generated data (data/) and the trained model (final/:\n"
        "config.json + model.safetensors, loadable by 'tessera forward --model' and by transformers).",
        options, (int)(sizeof options / sizeof *options)};
    int rc = cli_parse(&spec, argc, argv);
    if (rc != CLI_CONTINUE) return rc;
    if (strcmp(a->precision, "f32") != 0)
        return cli_usage_error("train", "--precision %s: only f32 is available yet", a->precision);
    if (strcmp(a->optimizer, "muon") != 0 && strcmp(a->optimizer, "adamw") != 0)
        return cli_usage_error("train", "--optimizer must be muon or adamw, not '%s'", a->optimizer);
    rc = make_run_dir(&r);
    if (rc == 0) {
        printf("run:      %s\n", r.run_dir);
        rc = open_data(&r);
    }
    if (rc == 0) rc = load_model(&r);
    if (rc == 0) rc = make_trainer(&r);
    if (rc == 0) rc = train_loop(&r);
    if (rc == 0) rc = eval_tasks(&r);
    if (rc == 0) rc = print_samples(&r);
    if (rc == 0) rc = save_final(&r);
    run_free(&r);
    return rc;
}
