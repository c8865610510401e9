/* cli_train.c - `tessera train`, the project's main job. With no arguments it trains the tiny
 * DeepSeek-V4 preset on the embedded synthetic dataset (generated into the run directory) for a
 * few minutes and shows it learn: loss against the data's unigram entropy, validation loss,
 * exact-answer accuracy on held-out tasks, greedy samples. The step itself is ts_trainer_step
 * (src/train/trainer.c); the options are ts_train_config (train_config.c: defaults < --config
 * JSON < flags); the run directory (run_dir.c, checkpoint.c) holds
 *   train_config.json  metrics.jsonl  loss.svg  data/  ckpt-<step>/  final/
 * and --resume continues from its newest checkpoint that verifies, bit for bit. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "cli/cli.h"
#include "cli/cli_bench.h"
#include "tessera/backend.h"
#include "tessera/train.h"

/* The defaults of a bare `tessera train`: small enough to visibly learn on 2 cores in minutes.
 * The spec's full tiny recipe (8 x 256 tokens, 1000 steps) is --batch 8 --seq 256 --steps 1000. */
static void quick_defaults(ts_train_config *c) {
    ts_train_config_default(c);
    c->steps = 120;
    c->batch = 4;
    c->seq = 128;
    c->lr = 2e-3;
    c->eval_every = 40;
    c->eval_batches = 4;
    c->save_every = 60;
    c->log_every = 10;
    snprintf(c->sample_prompt, sizeof c->sample_prompt, "rev kqzt=");
    c->sample_tokens = 12;
}

typedef struct {
    ts_train_config cfg;
    char run_dir[1024], data_dir[1100];
    bool synthetic;
    double unigram_bits;
    ts_model_weights *w;
    ts_backend *be;
    ts_data_loader *train, *val;
    ts_trainer *tr;
    ts_metrics_log *metrics;
    ts_train_ckpt *resume_from;
    uint64_t tokens_seen;
    double flops_per_token, peak_flops; /* for the MFU: model FLOPs of a trained token, machine FMA peak */
    double loads[64][512];     /* metrics rows: per-expert loads of up to 64 layers of 512 experts */
    char load_names[64][32];
} run;

static int fail(const char *msg) {
    fprintf(stderr, "tessera train: %s\n", msg);
    return CLI_EXIT_FAILURE;
}

static void warn(void *user, const char *message) {
    (void)user;
    fprintf(stderr, "tessera train: warning: %s\n", message);
}

/* ---------------------------------------------------------------- set-up */

static int open_data(run *r) {
    ts_io_error ioe;
    r->synthetic = r->cfg.data[0] == '\0';
    if (!r->synthetic) {
        snprintf(r->data_dir, sizeof r->data_dir, "%s", r->cfg.data);
    } else { /* deterministic: a resumed run regenerates the same shards */
        snprintf(r->data_dir, sizeof r->data_dir, "%s/data", r->run_dir);
        ts_synth_options so;
        ts_synth_default_options(&so);
        so.seed = r->cfg.seed;
        ts_synth_stats ss;
        if (ts_synth_write_shards(r->data_dir, &so, &ss, &ioe) != TS_OK) return fail(ioe.message);
        r->unigram_bits = ss.unigram_bits;
        printf("data:     embedded synthetic tasks (copy, reverse, sort, count, recall, add, sub): %llu training\n"
               "          documents (%llu tokens), %llu held out; unigram entropy %.3f bits/token\n",
               (unsigned long long)ss.train_docs, (unsigned long long)ss.train_tokens,
               (unsigned long long)ss.val_docs, ss.unigram_bits);
    }
    ts_data_loader_options lo;
    ts_data_loader_default_options(&lo, (int)r->cfg.batch, (int)r->cfg.seq, r->cfg.seed);
    for (int split = 0; split < 2; split++) {
        char **paths = NULL;
        size_t n = 0;
        ts_status s = ts_shard_list(r->data_dir, split ? "val" : "train", &paths, &n, &ioe);
        if (s != TS_OK && !split) return fail(ioe.message);
        if (s != TS_OK || n == 0) break; /* no validation split: no validation loss */
        lo.single_pass = split == 1;
        s = ts_data_loader_open((const char *const *)paths, n, &lo, split ? &r->val : &r->train, &ioe);
        for (size_t i = 0; i < n; i++) free(paths[i]);
        free(paths);
        if (s != TS_OK) return fail(ioe.message);
    }
    return 0;
}

/* The weights: the resumed checkpoint's, a checkpoint directory given as --model, or a preset /
 * config.json initialised with the seed. */
static int load_model(run *r) {
    char err[512] = "";
    struct stat sb;
    const char *model = r->cfg.model;
    bool dir = stat(model, &sb) == 0 && S_ISDIR(sb.st_mode);
    ts_status s;
    if (r->resume_from || dir) {
        s = ts_model_load(r->resume_from ? ts_train_ckpt_path(r->resume_from) : model, TS_F32, &r->w, err, sizeof err);
    } else {
        ts_v4_config cfg;
        s = ts_v4_config_resolve(model, &cfg, err, sizeof err);
        if (s == TS_OK) s = ts_model_weights_new(&cfg, TS_F32, &r->w, err, sizeof err);
        if (s == TS_OK) s = ts_model_weights_init(r->w, r->cfg.seed, err, sizeof err);
    }
    if (s != TS_OK) return fail(err);
    const ts_v4_config *c = ts_model_weights_config(r->w);
    if (ts_data_loader_vocab_size(r->train) > (uint32_t)c->vocab_size) {
        snprintf(err, sizeof err, "the data's vocabulary (%u ids) does not fit the model's %lld",
                 ts_data_loader_vocab_size(r->train), (long long)c->vocab_size);
        return fail(err);
    }
    ts_model_param_counts pc;
    ts_model_count_params(c, &pc);
    printf("model:    %s %s%s: %.2f M parameters (%.2f M active per token), %lld layers, hidden %lld\n",
           ts_model_kind_name(c->kind), model, r->resume_from ? " (resumed)" : dir ? " (checkpoint)" : " (initialised)",
           (double)pc.total / 1e6, (double)pc.active / 1e6, (long long)c->num_hidden_layers, (long long)c->hidden_size);
    return 0;
}

/* Copies the checkpoint's optimizer buffers, step and data position into the trainer. */
static int restore_state(run *r) {
    ts_train_ckpt *ck = r->resume_from;
    const ts_train_state *st = ts_train_ckpt_state(ck);
    if (st->config_hash != ts_train_config_hash(&r->cfg))
        return fail("the run directory's checkpoint was made with other training options; resume with the same ones");
    ts_io_error ioe;
    for (int i = 0; i < ts_trainer_state_count(r->tr); i++) {
        ts_optim_state os;
        ts_trainer_state_at(r->tr, i, &os);
        int64_t shape[1] = {os.numel};
        if (ts_checkpoint_load(ts_train_ckpt_optim_state(ck), os.name, 1, shape, TS_F32, os.data,
                               (size_t)os.numel * sizeof(float), &ioe) != TS_OK)
            return fail(ioe.message);
    }
    ts_trainer_set_step(r->tr, st->step);
    if (ts_data_loader_seek(r->train, &st->data, &ioe) != TS_OK) return fail(ioe.message);
    r->tokens_seen = st->tokens_seen;
    printf("resume:   %s, step %lld\n", ts_train_ckpt_path(ck), (long long)st->step);
    return 0;
}

/* Model FLOPs per trained token (model.h's count, averaged over the positions of a seq-long
 * sequence since attention grows with the position) and the machine's FMA peak: one thread's,
 * best of 20 short runs (a few milliseconds each, so a busy machine still shows its peak), times
 * the backend's threads. MFU = tokens/s x FLOPs per token / peak. */
static int measure_mfu_basis(run *r) {
    if (ts_model_training_flops_per_token(ts_model_weights_config(r->w), r->cfg.seq, &r->flops_per_token) != TS_OK)
        return fail("cannot count the model's FLOPs");
    ts_backend_info bi;
    ts_backend_get_info(r->be, &bi);
    int threads = bi.n_threads > 0 ? bi.n_threads : 1;
    double one = 0;
    for (int i = 0; i < 4; i++) one = fmax(one, cli_bench_fma_peak_gflops(NULL, 1));
    r->peak_flops = one * threads * 1e9;
    printf("compute:  %.2f MFLOP per trained token; FMA peak %.1f GFLOP/s (%d x %.1f) (MFU = tok/s x FLOP/token / peak)\n",
           r->flops_per_token * 1e-6, r->peak_flops * 1e-9, threads, one);
    return 0;
}

static int make_trainer(run *r) {
    char err[512] = "";
    const ts_train_config *c = &r->cfg;
    if (ts_backend_cpu_new(c->threads, &r->be) != TS_OK) return fail("cannot create the CPU backend");
    ts_trainer_options o;
    ts_trainer_default_options(&o, c->batch, c->seq, c->steps);
    o.lr = ts_train_config_lr_schedule(c);
    o.weight_decay = c->weight_decay;
    o.grad_clip = c->grad_clip;
    o.adamw_only = c->optimizer == TS_TRAIN_OPTIM_ADAMW;
    o.mtp = c->mtp_weight > 0;
    o.mtp_weight = c->mtp_weight;
    o.grad_accum = c->grad_accum;
    o.precision = c->precision;
    o.recompute = c->recompute;
    ts_status s = ts_trainer_new(r->w, r->train, r->be, &o, &r->tr, err, sizeof err);
    if (s == TS_ERR_OOM && strlen(err) + 80 < sizeof err)
        strcat(err, c->recompute ? " (lower --batch or --seq)" : " (lower --batch or --seq, or add --recompute)");
    if (s != TS_OK) return fail(err);
    if (r->resume_from && restore_state(r) != 0) return CLI_EXIT_FAILURE;
    ts_plan_stats ps = ts_trainer_plan_stats(r->tr);
    printf("training: %lld steps of %lld x %lld x %lld tokens, %s, %s compute, peak lr %g (warm-up %lld), MTP %s,\n"
           "          indexer dense for %lld steps; graph memory %.1f MiB planned (%.1f MiB without reuse)\n",
           (long long)c->steps, (long long)c->grad_accum, (long long)c->batch, (long long)c->seq,
           o.adamw_only ? "AdamW" : "Muon + AdamW",
           c->precision == TS_BF16 ? "bf16 (f32 master weights)" : "f32", o.lr.peak_lr, (long long)o.lr.warmup_steps,
           o.mtp ? "on" : "off", (long long)o.indexer_warmup, (double)ps.arena_bytes / 1048576.0,
           (double)ps.naive_bytes / 1048576.0);
    if (c->recompute) { /* what recomputation saves: the same graph planned without it */
        ts_plan_stats kept;
        if (ts_trainer_plan_without_recompute(r->tr, &kept, err, sizeof err) != TS_OK) return fail(err);
        printf("          activation recomputation: %.1f MiB planned, %.1f MiB without\n", (double)ps.arena_bytes / 1048576.0,
               (double)kept.arena_bytes / 1048576.0);
    }
    return measure_mfu_basis(r);
}

/* ---------------------------------------------------------------- checkpoints */

static int save_checkpoint(run *r, const char *name) {
    ts_model_st_list weights;
    char *config = NULL, err[512] = "";
    if (ts_model_weights_st_list(r->w, &weights) != TS_OK) return fail("out of memory");
    if (ts_v4_config_to_json(ts_model_weights_config(r->w), &config, err, sizeof err) != TS_OK) {
        ts_model_st_list_free(&weights);
        return fail(err);
    }
    int n_state = ts_trainer_state_count(r->tr);
    ts_st_write_tensor *state = calloc((size_t)n_state + 1, sizeof *state);
    int64_t *numels = calloc((size_t)n_state + 1, sizeof *numels);
    ts_optim_state *os = calloc((size_t)n_state + 1, sizeof *os); /* owns the names the list points at */
    for (int i = 0; state && numels && os && i < n_state; i++) {
        ts_trainer_state_at(r->tr, i, &os[i]);
        numels[i] = os[i].numel;
        state[i] = (ts_st_write_tensor){os[i].name, TS_ST_F32, 1, &numels[i], os[i].data, (size_t)os[i].numel * sizeof(float)};
    }
    ts_train_ckpt_contents cc = {.weights = weights.tensors, .n_weights = weights.n, .config_json = config,
                                 .optim_state = state, .n_optim_state = state ? (size_t)n_state : 0};
    cc.state.step = ts_trainer_step_count(r->tr);
    ts_rng_seed(&cc.state.rng, r->cfg.seed);
    ts_data_loader_position(r->train, &cc.state.data);
    cc.state.lr = ts_train_config_lr_schedule(&r->cfg);
    cc.state.tokens_seen = r->tokens_seen;
    cc.state.config_hash = ts_train_config_hash(&r->cfg);
    char path[1200];
    ts_io_error ioe;
    ts_status s = state && numels && os ? ts_train_ckpt_save(r->run_dir, name, &cc, (int)r->cfg.keep_last, path, sizeof path, &ioe)
                                  : TS_ERR_OOM;
    free(state);
    free(numels);
    free(os);
    free(config);
    ts_model_st_list_free(&weights);
    if (s != TS_OK) return fail(s == TS_ERR_OOM ? "out of memory" : ioe.message);
    printf("saved:    %s\n", path);
    return 0;
}

/* ---------------------------------------------------------------- evaluation */

static int complete(run *r, int n, const int32_t *const *prompts, const int64_t *lens, int64_t max_new, int32_t **outs,
                    int64_t *out_lens) {
    char err[512] = "";
    ts_model_completer *c = NULL;
    if (ts_model_completer_new(r->w, r->be, n, 64, &c, err, sizeof err) != TS_OK) return fail(err);
    ts_status s = ts_model_complete(c, n, prompts, lens, max_new, TS_BYTE_EOS, TS_BYTE_PAD, outs, out_lens);
    ts_model_completer_free(c);
    return s == TS_OK ? 0 : fail(ts_status_name(s));
}

/* The sample prompt (byte-level vocabulary) completed greedily. */
static int print_sample(run *r) {
    const char *p = r->cfg.sample_prompt;
    size_t n = strlen(p);
    if (n == 0 || n + 1 >= 64 || ts_model_weights_config(r->w)->vocab_size < TS_BYTE_OFFSET + 256) return 0;
    int32_t ids[64], out[64], *outs[1] = {out};
    const int32_t *prompts[1] = {ids};
    int64_t lens[1] = {(int64_t)n + 1}, out_len[1];
    ids[0] = TS_BYTE_BOS;
    for (size_t i = 0; i < n; i++) ids[i + 1] = (uint8_t)p[i] + TS_BYTE_OFFSET;
    int64_t max_new = r->cfg.sample_tokens < 63 - (int64_t)n ? r->cfg.sample_tokens : 63 - (int64_t)n;
    if (complete(r, 1, prompts, lens, max_new, outs, out_len) != 0) return CLI_EXIT_FAILURE;
    char text[64];
    ts_byte_decode(out, (size_t)out_len[0], text, sizeof text);
    printf("          sample: %s => %s\n", p, text);
    return 0;
}

static int eval_loss(run *r, double *loss) {
    *loss = NAN;
    if (!r->val) return 0;
    char err[512] = "";
    if (ts_trainer_eval(r->tr, r->val, (int)r->cfg.eval_batches, loss, err, sizeof err) != TS_OK) return fail(err);
    return 0;
}

/* Exact-answer accuracy on held-out synthetic items, and one sample per task. */
static int eval_tasks(run *r) {
    if (!r->synthetic) return 0;
    enum { PER_TASK = 4, N = PER_TASK * TS_SYNTH_TASK_COUNT };
    char err[512] = "";
    ts_model_completer *c = NULL;
    if (ts_model_completer_new(r->w, r->be, N, 64, &c, err, sizeof err) != TS_OK) return fail(err);
    ts_synth_eval ev;
    ts_io_error ioe;
    ts_status s = ts_synth_evaluate_model(r->cfg.seed, PER_TASK, c, &ev, &ioe);
    ts_model_completer_free(c);
    if (s != TS_OK) return fail(ioe.message);
    printf("held-out tasks, exact answers (%d per task):", PER_TASK);
    double acc[TS_SYNTH_TASK_COUNT + 1];
    for (int t = 0; t < TS_SYNTH_TASK_COUNT; t++) {
        printf(" %s %.0f%%", ts_synth_task_name((ts_synth_task)t), 100 * ev.accuracy[t]);
        acc[t] = ev.accuracy[t];
    }
    printf("; overall %.1f%%\n", 100 * ev.overall);
    acc[TS_SYNTH_TASK_COUNT] = ev.overall;
    ts_metric_extra ex[2] = {{"task_accuracy", &acc[TS_SYNTH_TASK_COUNT], 1}, {"task_accuracy_by_task", acc, TS_SYNTH_TASK_COUNT}};
    ts_metrics_row row = {ts_trainer_step_count(r->tr), NAN, NAN, NAN, ex, 2};
    if (ts_metrics_write(r->metrics, &row, &ioe) != TS_OK) return fail(ioe.message);

    ts_synth_item items[TS_SYNTH_TASK_COUNT];
    ts_synth_generate(r->cfg.seed + 99, TS_SYNTH_VAL, TS_SYNTH_TASK_COUNT, items);
    int32_t prompt[TS_SYNTH_TASK_COUNT][TS_SYNTH_TEXT_MAX + 1], out[TS_SYNTH_TASK_COUNT][TS_SYNTH_ANSWER_CAP];
    int32_t *outs[TS_SYNTH_TASK_COUNT];
    const int32_t *prompts[TS_SYNTH_TASK_COUNT];
    int64_t lens[TS_SYNTH_TASK_COUNT], out_lens[TS_SYNTH_TASK_COUNT];
    for (int i = 0; i < TS_SYNTH_TASK_COUNT; i++) {
        prompt[i][0] = TS_BYTE_BOS;
        for (int k = 0; k < items[i].prompt_len; k++) prompt[i][k + 1] = (uint8_t)items[i].text[k] + TS_BYTE_OFFSET;
        prompts[i] = prompt[i];
        lens[i] = items[i].prompt_len + 1;
        outs[i] = out[i];
    }
    if (complete(r, TS_SYNTH_TASK_COUNT, prompts, lens, TS_SYNTH_ANSWER_CAP, outs, out_lens) != 0) return CLI_EXIT_FAILURE;
    printf("samples (greedy, held-out prompts):\n");
    for (int i = 0; i < TS_SYNTH_TASK_COUNT; i++) {
        char text[TS_SYNTH_ANSWER_CAP + 1];
        ts_byte_decode(out[i], (size_t)out_lens[i], text, sizeof text);
        const ts_synth_item *it = &items[i];
        bool ok = strcmp(text, it->text + it->prompt_len) == 0;
        if (ok) printf("  %-36.*s => %-14s (correct)\n", it->prompt_len, it->text, text);
        else printf("  %-36.*s => %-14s (want %s)\n", it->prompt_len, it->text, text, it->text + it->prompt_len);
    }
    return 0;
}

/* ---------------------------------------------------------------- the loop */

/* One row per step: the losses, and at log steps the per-expert token loads of every
 * learned-routing layer ("load_layer_<i>": one count per expert). */
static int write_metrics(run *r, const ts_train_step_stats *st, double val, bool with_loads) {
    enum { MAX_EXTRA = 7 + 64, MAX_E = 512 };
    double tokens_per_s = (double)st->tokens / st->seconds;
    double extra_v[7] = {st->lm_loss,   st->mtp_loss, st->balance_loss, st->indexer_loss,
                         st->grad_norm, tokens_per_s * r->flops_per_token / r->peak_flops, val};
    ts_metric_extra ex[MAX_EXTRA] = {{"lm_loss", &extra_v[0], 1},      {"mtp_loss", &extra_v[1], 1},
                                     {"balance_loss", &extra_v[2], 1}, {"indexer_loss", &extra_v[3], 1},
                                     {"grad_norm", &extra_v[4], 1},    {"mfu", &extra_v[5], 1},
                                     {"val_loss", &extra_v[6], 1}};
    int n = isnan(val) ? 6 : 7;
    const ts_v4_config *c = ts_model_weights_config(r->w);
    for (int l = 0; with_loads && l < ts_v4_n_layer_slots(c) && l < 64 && c->n_routed_experts <= MAX_E; l++) {
        const int64_t *load = ts_trainer_expert_load(r->tr, l);
        if (!load) continue;
        for (int64_t e = 0; e < c->n_routed_experts; e++) r->loads[l][e] = (double)load[e];
        snprintf(r->load_names[l], sizeof r->load_names[l], "load_layer_%d", l);
        ex[n++] = (ts_metric_extra){r->load_names[l], r->loads[l], (int)c->n_routed_experts};
    }
    ts_metrics_row row = {st->step + 1, st->loss, st->lr, tokens_per_s, ex, n};
    ts_io_error ioe;
    return ts_metrics_write(r->metrics, &row, &ioe) == TS_OK ? 0 : fail(ioe.message);
}

static int train_loop(run *r) {
    const ts_train_config *c = &r->cfg;
    char err[512] = "";
    int64_t first_step = ts_trainer_step_count(r->tr);
    ts_progress prog;
    ts_progress_init(&prog, stdout, -1, c->log_every, c->steps, first_step, ts_time_seconds());
    prog.flops_per_token = r->flops_per_token;
    prog.peak_flops = r->peak_flops;
    double first_lm = NAN, last_lm = NAN;
    for (int64_t i = first_step; i < c->steps; i++) {
        ts_train_step_stats st;
        if (ts_trainer_step(r->tr, &st, err, sizeof err) != TS_OK) return fail(err);
        r->tokens_seen += (uint64_t)st.tokens;
        if (isnan(first_lm)) first_lm = st.lm_loss;
        last_lm = st.lm_loss;
        ts_progress_update(&prog, i + 1, st.lm_loss, st.lr, (double)st.tokens, ts_time_seconds());
        double val = NAN;
        bool eval = c->eval_every > 0 && ((i + 1) % c->eval_every == 0 || i + 1 == c->steps);
        if (eval && eval_loss(r, &val) != 0) return CLI_EXIT_FAILURE;
        if (write_metrics(r, &st, val, (i + 1) % c->log_every == 0) != 0) return CLI_EXIT_FAILURE;
        if (eval) {
            ts_progress_finish(&prog);
            printf("eval:     step %lld, validation loss %.4f (%.3f bits/token)\n", (long long)(i + 1), val, val / log(2.0));
            if (print_sample(r) != 0) return CLI_EXIT_FAILURE;
        }
        if (c->save_every > 0 && (i + 1) % c->save_every == 0 && i + 1 < c->steps) {
            ts_progress_finish(&prog);
            if (save_checkpoint(r, NULL) != 0) return CLI_EXIT_FAILURE;
        }
    }
    ts_progress_finish(&prog);
    if (!isnan(first_lm))
        printf("learned:  LM loss %.3f -> %.3f bits/token (first -> last step)%s", first_lm / log(2.0),
               last_lm / log(2.0), r->unigram_bits > 0 ? "" : "\n");
    if (!isnan(first_lm) && r->unigram_bits > 0)
        printf("; the data's unigram entropy is %.3f bits/token\n", r->unigram_bits);
    return 0;
}

static int finish(run *r) {
    char svg[1200];
    snprintf(svg, sizeof svg, "%s/loss.svg", r->run_dir);
    ts_io_error ioe;
    if (ts_loss_plot_write(ts_metrics_path(r->metrics), svg, false, &ioe) != TS_OK) return fail(ioe.message);
    if (save_checkpoint(r, "final") != 0) return CLI_EXIT_FAILURE;
    printf("run:      %s (metrics.jsonl, loss.svg, train_config.json, final/)\n", r->run_dir);
    return 0;
}

static void run_free(run *r) {
    ts_metrics_close(r->metrics);
    ts_trainer_free(r->tr);
    ts_data_loader_free(r->train);
    ts_data_loader_free(r->val);
    ts_backend_free(r->be);
    ts_model_weights_free(r->w);
    ts_train_ckpt_close(r->resume_from);
}

static void print_help(void) {
    printf("usage: tessera train [options]\n\n"
           "Train a DeepSeek-V4 (or dense) model. With no options: the tiny V4 preset on the embedded\n"
           "synthetic tasks, a few minutes on 2 cores. Options come from the defaults, then --config FILE.json\n"
           "(keys = the names below with '_'), then the flags.\n\noptions:\n");
    size_t n = ts_train_config_help(NULL, 0);
    char *text = malloc(n + 1);
    if (text) {
        ts_train_config_help(text, n + 1);
        fputs(text, stdout);
        free(text);
    }
    printf("\nA bare `tessera train` uses --steps 120 --batch 4 --seq 128 --lr 0.002 --eval-every 40\n"
           "--save-every 60; the spec's tiny recipe is --batch 8 --seq 256 --steps 1000 --lr 0.001.\n"
           "The run directory gets train_config.json, metrics.jsonl (one JSON object per step: step, loss,\n"
           "lr, tokens_per_s, mfu (model FLOP utilization), ..., val_loss at evaluations), loss.svg, ckpt-<step>/\n"
           "and final/ (config.json, model.safetensors, training_state.safetensors, manifest.json), loadable by\n"
           "'tessera generate'.\n");
}

int cli_train_main(int argc, char **argv) {
    for (int i = 1; i < argc; i++)
        if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            print_help();
            return CLI_EXIT_OK;
        }
    run r;
    memset(&r, 0, sizeof r);
    quick_defaults(&r.cfg);
    ts_io_error ioe;
    if (ts_train_config_parse_args(&r.cfg, argc - 1, argv + 1, &ioe) != TS_OK)
        return cli_usage_error("train", "%s", ioe.message);
    if (r.cfg.resume && !r.cfg.out[0]) return cli_usage_error("train", "--resume needs --out DIR (the run to continue)");
    char cfg_path[1200];
    int rc = 0;
    if (ts_run_dir_create(r.cfg.out, "runs", time(NULL), r.run_dir, sizeof r.run_dir, &ioe) != TS_OK) rc = fail(ioe.message);
    if (rc == 0 && ts_train_ckpt_clean(r.run_dir, &ioe) != TS_OK) rc = fail(ioe.message);
    if (rc == 0 && r.cfg.resume && ts_train_ckpt_open_latest(r.run_dir, warn, NULL, &r.resume_from, &ioe) != TS_OK)
        rc = fail(ioe.message);
    if (rc == 0 && r.cfg.resume && !r.resume_from) printf("resume:   no checkpoint in %s yet, starting afresh\n", r.run_dir);
    snprintf(cfg_path, sizeof cfg_path, "%s/train_config.json", r.run_dir);
    if (rc == 0 && ts_train_config_save(&r.cfg, cfg_path, &ioe) != TS_OK) rc = fail(ioe.message);
    if (rc == 0) {
        printf("run:      %s\n", r.run_dir);
        rc = open_data(&r);
    }
    if (rc == 0) rc = load_model(&r);
    if (rc == 0) rc = make_trainer(&r);
    int64_t keep = r.resume_from ? ts_train_ckpt_state(r.resume_from)->step : -1;
    if (rc == 0 && ts_metrics_open(r.run_dir, keep, &r.metrics, &ioe) != TS_OK) rc = fail(ioe.message);
    if (rc == 0) rc = train_loop(&r);
    if (rc == 0) rc = eval_tasks(&r);
    if (rc == 0) rc = finish(&r);
    run_free(&r);
    return rc;
}
