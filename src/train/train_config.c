/* train_config.c - the run config of `tessera train` (train.h): defaults from the spec §7.2 tiny
 * recipe, a JSON file on top, command-line flags on top of that, one check at the end, and the
 * effective config saved back as JSON. One table lists every option once (key, type, field,
 * bounds, help); the JSON reader, the flag parser, the writer, the hash and the help text all
 * walk it, so an option added here is known everywhere. */
#include <errno.h>
#include <inttypes.h>
#include <jansson.h>
#include <math.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tessera/train.h"

typedef enum { OPT_INT, OPT_SEED, OPT_REAL, OPT_BOOL, OPT_TEXT, OPT_CHOICE } opt_type;

typedef struct {
    const char *name;
    int value;
} choice;

typedef struct {
    const char *key;        /* JSON key; the flag is "--" + key with '-' for '_' */
    opt_type type;
    size_t offset;          /* of the field in ts_train_config */
    double min, max;        /* OPT_INT, OPT_REAL: inclusive bounds */
    bool min_open;          /* OPT_REAL: min itself is excluded */
    const choice *choices;  /* OPT_CHOICE: ends with a NULL name */
    bool hashed;            /* changes the trained numbers (ts_train_config_hash) */
    const char *hint;       /* the value in the help text */
    const char *help;
} option;

static const choice precisions[] = {{"f32", TS_F32}, {"bf16", TS_BF16}, {NULL, 0}};
static const choice schedules[] = {{"constant", TS_LR_CONSTANT}, {"cosine", TS_LR_COSINE}, {"wsd", TS_LR_WSD}, {NULL, 0}};
static const choice decay_shapes[] = {{"cosine", TS_LR_DECAY_COSINE}, {"linear", TS_LR_DECAY_LINEAR}, {NULL, 0}};
static const choice optimizers[] = {{"muon", TS_TRAIN_OPTIM_MUON}, {"adamw", TS_TRAIN_OPTIM_ADAMW}, {NULL, 0}};

#define F(field) offsetof(ts_train_config, field)
#define STEPS_MAX 1e12

static const option options[] = {
    {"model", OPT_TEXT, F(model), 0, 0, false, NULL, true, "CONFIG.json|PRESET", "model: a config.json or a preset name"},
    {"data", OPT_TEXT, F(data), 0, 0, false, NULL, true, "PATH", "token shard directory (empty: the embedded synthetic tasks)"},
    {"steps", OPT_INT, F(steps), 1, STEPS_MAX, false, NULL, true, "N", "optimizer steps"},
    {"batch", OPT_INT, F(batch), 1, 1 << 20, false, NULL, true, "B", "sequences per micro-batch"},
    {"seq", OPT_INT, F(seq), 2, 1 << 24, false, NULL, true, "T", "tokens per sequence"},
    {"threads", OPT_INT, F(threads), 0, 4096, false, NULL, false, "N", "compute threads (0: every core)"},
    {"precision", OPT_CHOICE, F(precision), 0, 0, false, precisions, true, "f32|bf16", "compute precision (master weights stay f32)"},
    {"seed", OPT_SEED, F(seed), 0, (double)INT64_MAX, false, NULL, true, "S", "seed of the weights, the data order and the synthetic data"},
    {"save_every", OPT_INT, F(save_every), 0, STEPS_MAX, false, NULL, false, "K", "checkpoint every K steps (0: only the final one)"},
    {"out", OPT_TEXT, F(out), 0, 0, false, NULL, false, "DIR", "run directory (empty: runs/<YYYYmmdd-HHMMSS>)"},
    {"resume", OPT_BOOL, F(resume), 0, 0, false, NULL, false, NULL, "continue from the latest checkpoint in the run directory"},
    {"lr", OPT_REAL, F(lr), 0, 10, false, NULL, true, "X", "peak learning rate"},
    {"min_lr_ratio", OPT_REAL, F(min_lr_ratio), 0, 1, false, NULL, true, "X", "final learning rate as a fraction of the peak"},
    {"warmup_steps", OPT_INT, F(warmup_steps), -1, STEPS_MAX, false, NULL, true, "N", "linear warm-up steps (-1: min(100, steps / 10))"},
    {"schedule", OPT_CHOICE, F(schedule), 0, 0, false, schedules, true, "constant|cosine|wsd", "learning-rate schedule after the warm-up: constant peak, cosine decay over the whole run, or warm-up / stable / decay"},
    {"decay_fraction", OPT_REAL, F(decay_fraction), 0, 1, true, NULL, true, "X", "wsd: fraction of the steps spent decaying, at the end"},
    {"decay_shape", OPT_CHOICE, F(decay_shape), 0, 0, false, decay_shapes, true, "cosine|linear", "wsd: shape of the decay"},
    {"weight_decay", OPT_REAL, F(weight_decay), 0, 10, false, NULL, true, "X", "decoupled weight decay of the matrices, embedding and head"},
    {"grad_clip", OPT_REAL, F(grad_clip), 0, 1e9, false, NULL, true, "X", "clip the global gradient norm to X (0: off)"},
    {"grad_accum", OPT_INT, F(grad_accum), 1, 65536, false, NULL, true, "N", "micro-batches accumulated per optimizer step"},
    {"eval_every", OPT_INT, F(eval_every), 0, STEPS_MAX, false, NULL, false, "N", "validation loss every N steps (0: never)"},
    {"eval_batches", OPT_INT, F(eval_batches), 1, 1e9, false, NULL, false, "N", "validation batches per evaluation"},
    {"keep_last", OPT_INT, F(keep_last), 0, 1e6, false, NULL, false, "K", "keep the K newest checkpoints (0: keep all)"},
    {"log_every", OPT_INT, F(log_every), 1, STEPS_MAX, false, NULL, false, "N", "progress line and metrics row every N steps"},
    {"optimizer", OPT_CHOICE, F(optimizer), 0, 0, false, optimizers, true, "muon|adamw", "Muon for the matrices and AdamW for the rest (spec 5.3), or AdamW for all"},
    {"mtp_weight", OPT_REAL, F(mtp_weight), 0, 10, false, NULL, true, "X", "MTP loss weight, divided by 3 in the decay phase (0: no MTP)"},
    {"sample_prompt", OPT_TEXT, F(sample_prompt), 0, 0, false, NULL, false, "TEXT", "prompt completed greedily at each evaluation (empty: none)"},
    {"sample_tokens", OPT_INT, F(sample_tokens), 0, 65536, false, NULL, false, "N", "tokens generated for the sample prompt"},
    {"recompute", OPT_BOOL, F(recompute), 0, 0, false, NULL, false, NULL, "recompute activations in backward: less memory, more compute"},
};
#undef F

#define N_OPTIONS (sizeof options / sizeof *options)
#define AUTO_WARMUP_MAX 100

void ts_train_config_default(ts_train_config *c) {
    ts_lr_schedule tiny = ts_lr_schedule_tiny(1000);
    *c = (ts_train_config){.steps = tiny.total_steps,
                           .batch = 8,
                           .seq = 256,
                           .threads = 0,
                           .precision = TS_F32,
                           .seed = 1,
                           .save_every = 200,
                           .resume = false,
                           .lr = tiny.peak_lr,
                           .min_lr_ratio = tiny.final_lr / tiny.peak_lr,
                           .warmup_steps = -1,
                           .schedule = tiny.kind,
                           .decay_fraction = tiny.decay_fraction,
                           .decay_shape = tiny.decay_shape,
                           .weight_decay = 0.1,
                           .grad_clip = 1.0,
                           .grad_accum = 1,
                           .eval_every = 100,
                           .eval_batches = 8,
                           .keep_last = 3,
                           .log_every = 10,
                           .optimizer = TS_TRAIN_OPTIM_MUON,
                           .mtp_weight = TS_MTP_WEIGHT,
                           .sample_tokens = 32,
                           .recompute = false};
    snprintf(c->model, sizeof c->model, "tiny");
}

/* ---------------------------------------------------------------- field access */

static void *field(ts_train_config *c, const option *o) { return (char *)c + o->offset; }
static const void *cfield(const ts_train_config *c, const option *o) { return (const char *)c + o->offset; }

/* OPT_INT fields are int64_t, OPT_SEED uint64_t; both are read and bounded as int64. */
static int64_t get_int(const ts_train_config *c, const option *o) {
    if (o->type == OPT_SEED) return (int64_t) * (const uint64_t *)cfield(c, o);
    return *(const int64_t *)cfield(c, o);
}

static void set_int(ts_train_config *c, const option *o, int64_t v) {
    if (o->type == OPT_SEED)
        *(uint64_t *)field(c, o) = (uint64_t)v;
    else
        *(int64_t *)field(c, o) = v;
}

/* Choice fields are enums; they are stored and read through int. */
static const char *choice_name(const option *o, int v) {
    for (const choice *ch = o->choices; ch->name; ch++)
        if (ch->value == v) return ch->name;
    return "?";
}

static void choice_list(const option *o, char *buf, size_t cap) {
    size_t n = 0;
    buf[0] = '\0';
    for (const choice *ch = o->choices; ch->name && n < cap; ch++)
        n += (size_t)snprintf(buf + n, cap - n, "%s%s", ch == o->choices ? "" : "|", ch->name);
}

static const option *find_option(const char *key, size_t len) {
    for (size_t i = 0; i < N_OPTIONS; i++)
        if (strlen(options[i].key) == len && strncmp(options[i].key, key, len) == 0) return &options[i];
    return NULL;
}

/* ---------------------------------------------------------------- setting one value
 *
 * Both the JSON reader and the flag parser end here; `where` says where the value came from
 * ("run.json" or "command line") and `name` how the user spelled the option. */

static ts_status set_text(ts_train_config *c, const option *o, const char *where, const char *name,
                          const char *text, ts_io_error *err) {
    if (strlen(text) >= TS_TRAIN_TEXT_MAX)
        return ts_io_set_error(err, TS_ERR_RANGE, "%s: %s: %zu characters is longer than the %d allowed", where,
                               name, strlen(text), TS_TRAIN_TEXT_MAX - 1);
    snprintf((char *)field(c, o), TS_TRAIN_TEXT_MAX, "%s", text);
    return TS_OK;
}

static ts_status set_choice(ts_train_config *c, const option *o, const char *where, const char *name,
                            const char *text, ts_io_error *err) {
    for (const choice *ch = o->choices; ch->name; ch++) {
        if (strcmp(ch->name, text) == 0) {
            *(int *)field(c, o) = ch->value;
            return TS_OK;
        }
    }
    char list[128];
    choice_list(o, list, sizeof list);
    return ts_io_set_error(err, TS_ERR_RANGE, "%s: %s: '%s' is not one of %s", where, name, text, list);
}

/* ---------------------------------------------------------------- JSON */

static ts_status set_from_json(ts_train_config *c, const option *o, const char *where, json_t *v,
                               ts_io_error *err) {
    const char *key = o->key;
    switch (o->type) {
    case OPT_INT:
    case OPT_SEED:
        if (!json_is_integer(v)) return ts_io_set_error(err, TS_ERR_FORMAT, "%s: %s: must be an integer", where, key);
        if (o->type == OPT_SEED && json_integer_value(v) < 0)
            return ts_io_set_error(err, TS_ERR_RANGE, "%s: %s: must not be negative", where, key);
        set_int(c, o, (int64_t)json_integer_value(v));
        return TS_OK;
    case OPT_REAL:
        if (!json_is_number(v)) return ts_io_set_error(err, TS_ERR_FORMAT, "%s: %s: must be a number", where, key);
        *(double *)field(c, o) = json_number_value(v);
        return TS_OK;
    case OPT_BOOL:
        if (!json_is_boolean(v)) return ts_io_set_error(err, TS_ERR_FORMAT, "%s: %s: must be true or false", where, key);
        *(bool *)field(c, o) = json_is_true(v);
        return TS_OK;
    case OPT_TEXT:
        if (!json_is_string(v)) return ts_io_set_error(err, TS_ERR_FORMAT, "%s: %s: must be a string", where, key);
        return set_text(c, o, where, key, json_string_value(v), err);
    case OPT_CHOICE:
        if (!json_is_string(v)) return ts_io_set_error(err, TS_ERR_FORMAT, "%s: %s: must be a string", where, key);
        return set_choice(c, o, where, key, json_string_value(v), err);
    }
    return ts_io_set_error(err, TS_ERR_INTERNAL, "%s: %s: unknown option type", where, key);
}

static ts_status apply_json(ts_train_config *c, json_t *root, const char *where, ts_io_error *err) {
    if (!json_is_object(root))
        return ts_io_set_error(err, TS_ERR_FORMAT, "%s: a training config must be a JSON object", where);
    const char *key;
    json_t *v;
    json_object_foreach(root, key, v) {
        const option *o = find_option(key, strlen(key));
        if (!o) return ts_io_set_error(err, TS_ERR_FORMAT, "%s: unknown key '%s' (see tessera train --help)", where, key);
        ts_status s = set_from_json(c, o, where, v, err);
        if (s != TS_OK) return s;
    }
    return TS_OK;
}

static ts_status parse_json_layer(ts_train_config *c, const char *json_text, const char *where, ts_io_error *err) {
    json_error_t jerr;
    json_t *root = json_loads(json_text, JSON_REJECT_DUPLICATES, &jerr);
    if (!root)
        return ts_io_set_error(err, TS_ERR_FORMAT, "%s:%d:%d: %s", where, jerr.line, jerr.column, jerr.text);
    ts_status s = apply_json(c, root, where, err);
    json_decref(root);
    return s;
}

static ts_status load_json_layer(ts_train_config *c, const char *path, ts_io_error *err) {
    json_error_t jerr;
    json_t *root = json_load_file(path, JSON_REJECT_DUPLICATES, &jerr);
    if (!root) {
        /* jansson reports an unreadable file as a line -1 error. */
        ts_status s = jerr.line < 0 ? TS_ERR_IO : TS_ERR_FORMAT;
        if (s == TS_ERR_IO) return ts_io_set_error(err, s, "%s: %s", path, jerr.text);
        return ts_io_set_error(err, s, "%s:%d:%d: %s", path, jerr.line, jerr.column, jerr.text);
    }
    ts_status s = apply_json(c, root, path, err);
    json_decref(root);
    return s;
}

ts_status ts_train_config_parse_json(ts_train_config *c, const char *json_text, const char *source,
                                     ts_io_error *err) {
    if (!c || !json_text) return ts_io_set_error(err, TS_ERR_INVALID_ARG, "train config: config and text are required");
    ts_status s = parse_json_layer(c, json_text, source ? source : "train config", err);
    return s != TS_OK ? s : ts_train_config_check(c, err);
}

ts_status ts_train_config_load_json(ts_train_config *c, const char *path, ts_io_error *err) {
    if (!c || !path) return ts_io_set_error(err, TS_ERR_INVALID_ARG, "train config: config and path are required");
    ts_status s = load_json_layer(c, path, err);
    return s != TS_OK ? s : ts_train_config_check(c, err);
}

/* ---------------------------------------------------------------- flags */

#define ARGS "command line"

/* "--save-every" -> the option "save_every" (NULL when unknown). */
static const option *option_for_flag(const char *flag, size_t len) {
    char key[64];
    if (len >= sizeof key) return NULL;
    for (size_t i = 0; i < len; i++) key[i] = flag[i] == '-' ? '_' : flag[i];
    return find_option(key, len);
}

static ts_status set_from_text(ts_train_config *c, const option *o, const char *flag, const char *text,
                               ts_io_error *err) {
    char *end = NULL;
    errno = 0;
    switch (o->type) {
    case OPT_INT:
    case OPT_SEED: {
        long long v = strtoll(text, &end, 10);
        if (!*text || *end || errno == ERANGE)
            return ts_io_set_error(err, TS_ERR_FORMAT, ARGS ": %s: '%s' is not an integer", flag, text);
        if (o->type == OPT_SEED && v < 0)
            return ts_io_set_error(err, TS_ERR_RANGE, ARGS ": %s: must not be negative", flag);
        set_int(c, o, (int64_t)v);
        return TS_OK;
    }
    case OPT_REAL: {
        double v = strtod(text, &end);
        if (!*text || *end || errno == ERANGE)
            return ts_io_set_error(err, TS_ERR_FORMAT, ARGS ": %s: '%s' is not a number", flag, text);
        *(double *)field(c, o) = v;
        return TS_OK;
    }
    case OPT_BOOL:
        if (strcmp(text, "true") != 0 && strcmp(text, "false") != 0)
            return ts_io_set_error(err, TS_ERR_FORMAT, ARGS ": %s: '%s' is not true or false", flag, text);
        *(bool *)field(c, o) = strcmp(text, "true") == 0;
        return TS_OK;
    case OPT_TEXT:
        return set_text(c, o, ARGS, flag, text, err);
    case OPT_CHOICE:
        return set_choice(c, o, ARGS, flag, text, err);
    }
    return ts_io_set_error(err, TS_ERR_INTERNAL, ARGS ": %s: unknown option type", flag);
}

/* Splits argv[i] into its flag name (after "--") and an inline "=value". */
static bool split_flag(const char *arg, const char **name, size_t *name_len, const char **inline_value) {
    if (strncmp(arg, "--", 2) != 0 || !arg[2]) return false;
    *name = arg + 2;
    const char *eq = strchr(*name, '=');
    *name_len = eq ? (size_t)(eq - *name) : strlen(*name);
    *inline_value = eq ? eq + 1 : NULL;
    return true;
}

/* Finds the one --config and loads it over c; *config_index = its position (-1 without). */
static ts_status load_config_flag(ts_train_config *c, int argc, char *const *argv, int *config_index,
                                  ts_io_error *err) {
    *config_index = -1;
    const char *path = NULL;
    for (int i = 0; i < argc; i++) {
        const char *name, *value;
        size_t len;
        if (!split_flag(argv[i], &name, &len, &value) || len != 6 || strncmp(name, "config", 6) != 0) continue;
        if (path) return ts_io_set_error(err, TS_ERR_FORMAT, ARGS ": --config: given twice");
        if (!value && i + 1 >= argc)
            return ts_io_set_error(err, TS_ERR_FORMAT, ARGS ": --config: needs a FILE.json");
        path = value ? value : argv[i + 1];
        *config_index = i;
    }
    return path ? load_json_layer(c, path, err) : TS_OK;
}

ts_status ts_train_config_parse_args(ts_train_config *c, int argc, char *const *argv, ts_io_error *err) {
    if (!c || argc < 0 || (argc > 0 && !argv))
        return ts_io_set_error(err, TS_ERR_INVALID_ARG, "train config: config and argv are required");
    int config_at;
    ts_status s = load_config_flag(c, argc, argv, &config_at, err);
    for (int i = 0; s == TS_OK && i < argc; i++) {
        const char *name, *value;
        size_t len;
        if (!split_flag(argv[i], &name, &len, &value))
            return ts_io_set_error(err, TS_ERR_FORMAT, ARGS ": unexpected argument '%s' (options start with --)", argv[i]);
        if (i == config_at) {
            if (!value) i++;
            continue;
        }
        const option *o = option_for_flag(name, len);
        if (!o) return ts_io_set_error(err, TS_ERR_FORMAT, ARGS ": unknown option '--%.*s' (see tessera train --help)", (int)len, name);
        char flag[80];
        snprintf(flag, sizeof flag, "--%.*s", (int)len, name);
        if (!value && o->type == OPT_BOOL) {
            *(bool *)field(c, o) = true;
            continue;
        }
        if (!value) {
            if (i + 1 >= argc) return ts_io_set_error(err, TS_ERR_FORMAT, ARGS ": %s: needs a value (%s)", flag, o->hint);
            value = argv[++i];
        }
        s = set_from_text(c, o, flag, value, err);
    }
    return s != TS_OK ? s : ts_train_config_check(c, err);
}

/* ---------------------------------------------------------------- checks */

static ts_status check_bounds(const ts_train_config *c, const option *o, ts_io_error *err) {
    if (o->type == OPT_INT || o->type == OPT_SEED) {
        int64_t v = get_int(c, o);
        if ((double)v < o->min || (double)v > o->max)
            return ts_io_set_error(err, TS_ERR_RANGE, "train config: %s: %" PRId64 " is outside [%.0f, %.0f]", o->key, v,
                                   o->min, o->max);
    } else if (o->type == OPT_REAL) {
        double v = *(const double *)cfield(c, o);
        bool low = o->min_open ? !(v > o->min) : !(v >= o->min);
        if (!isfinite(v) || low || v > o->max)
            return ts_io_set_error(err, TS_ERR_RANGE, "train config: %s: %g is outside %s%g, %g]", o->key, v,
                                   o->min_open ? "(" : "[", o->min, o->max);
    }
    return TS_OK;
}

static int64_t resolved_warmup(const ts_train_config *c) {
    if (c->warmup_steps >= 0) return c->warmup_steps;
    return c->steps / 10 < AUTO_WARMUP_MAX ? c->steps / 10 : AUTO_WARMUP_MAX;
}

ts_lr_schedule ts_train_config_lr_schedule(const ts_train_config *c) {
    ts_lr_schedule s = {.kind = c->schedule,
                        .peak_lr = c->lr,
                        .warmup_steps = resolved_warmup(c),
                        .total_steps = c->steps,
                        .final_lr = c->lr * c->min_lr_ratio,
                        .decay_fraction = c->decay_fraction,
                        .decay_shape = c->decay_shape};
    return s;
}

ts_status ts_train_config_check(ts_train_config *c, ts_io_error *err) {
    if (!c) return ts_io_set_error(err, TS_ERR_INVALID_ARG, "train config: NULL");
    for (size_t i = 0; i < N_OPTIONS; i++) {
        ts_status s = check_bounds(c, &options[i], err);
        if (s != TS_OK) return s;
    }
    if (!c->model[0]) return ts_io_set_error(err, TS_ERR_RANGE, "train config: model: must name a preset or a config.json");
    c->warmup_steps = resolved_warmup(c);
    if (c->schedule != TS_LR_CONSTANT && c->warmup_steps >= c->steps)
        return ts_io_set_error(err, TS_ERR_RANGE,
                               "train config: warmup_steps: %" PRId64 " must be less than steps (%" PRId64
                               ") with the %s schedule",
                               c->warmup_steps, c->steps, choice_name(find_option("schedule", 8), (int)c->schedule));
    ts_lr_schedule lr = ts_train_config_lr_schedule(c);
    char why[256];
    if (ts_lr_schedule_validate(&lr, why, sizeof why) != TS_OK)
        return ts_io_set_error(err, TS_ERR_RANGE, "train config: schedule: %s", why);
    return TS_OK;
}

/* ---------------------------------------------------------------- JSON out, hash */

static json_t *value_json(const ts_train_config *c, const option *o) {
    switch (o->type) {
    case OPT_INT:
    case OPT_SEED: return json_integer((json_int_t)get_int(c, o));
    case OPT_REAL: return json_real(*(const double *)cfield(c, o));
    case OPT_BOOL: return json_boolean(*(const bool *)cfield(c, o));
    case OPT_TEXT: return json_string((const char *)cfield(c, o));
    case OPT_CHOICE: return json_string(choice_name(o, *(const int *)cfield(c, o)));
    }
    return NULL;
}

/* The fewest significant digits that read back as exactly v: 0.1 stays "0.1" in the file, and
 * every double still survives a save and a load bit for bit (so does the config hash). */
static int shortest_digits(double v) {
    char buf[40];
    for (int p = 1; p < 17; p++) {
        snprintf(buf, sizeof buf, "%.*g", p, v);
        if (strtod(buf, NULL) == v) return p;
    }
    return 17;
}

static bool put_json(FILE *out, json_t *v, size_t flags) {
    char *text = v ? json_dumps(v, flags | JSON_ENCODE_ANY) : NULL;
    if (text) fputs(text, out);
    free(text);
    json_decref(v);
    return text != NULL;
}

/* The options as a JSON object in table order, one per line (only the hashed ones when
 * hashed_only); malloc'd, NULL when out of memory. Written by hand rather than by json_dumps
 * because jansson prints every real with one precision. */
static char *config_text(const ts_train_config *c, bool hashed_only) {
    char *text = NULL;
    size_t size = 0;
    FILE *out = open_memstream(&text, &size);
    if (!out) return NULL;
    bool ok = true, first = true;
    fputc('{', out);
    for (size_t i = 0; ok && i < N_OPTIONS; i++) {
        const option *o = &options[i];
        if (hashed_only && !o->hashed) continue;
        fputs(first ? "\n  " : ",\n  ", out);
        first = false;
        size_t precision = o->type == OPT_REAL ? JSON_REAL_PRECISION(shortest_digits(*(const double *)cfield(c, o))) : 0;
        ok = put_json(out, json_string(o->key), 0);
        fputs(": ", out);
        ok = ok && put_json(out, value_json(c, o), precision);
    }
    fputs("\n}\n", out);
    if (fclose(out) != 0 || !ok) {
        free(text);
        return NULL;
    }
    return text;
}

char *ts_train_config_to_json(const ts_train_config *c) { return c ? config_text(c, false) : NULL; }

ts_status ts_train_config_save(const ts_train_config *c, const char *path, ts_io_error *err) {
    char *text = ts_train_config_to_json(c);
    if (!text) return ts_io_set_error(err, TS_ERR_OOM, "%s: out of memory formatting the training config", path);
    ts_status s = ts_atomic_write_file(path, text, strlen(text), err);
    free(text);
    return s;
}

uint64_t ts_train_config_hash(const ts_train_config *c) {
    char *text = config_text(c, true);
    uint64_t h = text ? ts_xxh64(text, strlen(text), 0) : 0;
    free(text);
    return h;
}

/* ---------------------------------------------------------------- help */

static void default_text(const ts_train_config *d, const option *o, char *buf, size_t cap) {
    switch (o->type) {
    case OPT_INT:
    case OPT_SEED: snprintf(buf, cap, "%" PRId64, get_int(d, o)); break;
    case OPT_REAL: snprintf(buf, cap, "%g", *(const double *)cfield(d, o)); break;
    case OPT_BOOL: snprintf(buf, cap, "%s", *(const bool *)cfield(d, o) ? "on" : "off"); break;
    case OPT_TEXT: snprintf(buf, cap, "%s", (const char *)cfield(d, o)); break;
    case OPT_CHOICE: snprintf(buf, cap, "%s", choice_name(o, *(const int *)cfield(d, o))); break;
    }
}

/* Appends to buf like snprintf, counting the full length even past cap. */
#if defined(__GNUC__)
__attribute__((format(printf, 4, 5)))
#endif
static void append(char *buf, size_t cap, size_t *len, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(*len < cap ? buf + *len : NULL, *len < cap ? cap - *len : 0, fmt, ap);
    va_end(ap);
    if (n > 0) *len += (size_t)n;
}

size_t ts_train_config_help(char *buf, size_t cap) {
    ts_train_config d;
    ts_train_config_default(&d);
    size_t len = 0;
    if (cap) buf[0] = '\0';
    append(buf, cap, &len, "  %-30s %s\n", "--config FILE.json",
           "load options from a JSON object (keys: the option names with '_' for '-'); flags override it");
    for (size_t i = 0; i < N_OPTIONS; i++) {
        const option *o = &options[i];
        char flag[96], def[64];
        int n = snprintf(flag, sizeof flag, "--");
        for (const char *k = o->key; *k && n < (int)sizeof flag - 1; k++) flag[n++] = *k == '_' ? '-' : *k;
        flag[n] = '\0';
        if (o->hint) snprintf(flag + n, sizeof flag - (size_t)n, " %s", o->hint);
        default_text(&d, o, def, sizeof def);
        if (def[0])
            append(buf, cap, &len, "  %-30s %s (default: %s)\n", flag, o->help, def);
        else /* the help says what empty means */
            append(buf, cap, &len, "  %-30s %s\n", flag, o->help);
    }
    return len;
}
