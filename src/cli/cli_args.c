/* cli_args.c - the option parser behind every `tessera` subcommand. A subcommand describes its
 * options in a table (cli.h); this file turns argv into values, prints --help from the same
 * table (so help and behaviour cannot drift apart), and reports any mistake as a single line
 * on stderr with exit code 2. Accepted forms: --name VALUE, --name=VALUE, flags, list options
 * (--name V1 V2 ...) and, for commands that take them, positional words. It also dispatches
 * the subcommands of commands that have some ("tessera data prepare"). */
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli.h"
#include "tessera/model.h"

int cli_usage_error(const char *command, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "tessera%s%s: ", command ? " " : "", command ? command : "");
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, " (see 'tessera%s%s --help')\n", command ? " " : "", command ? command : "");
    va_end(ap);
    return CLI_EXIT_USAGE;
}

int cli_matmul_dtype(const char *command, const char *name, ts_dtype *out) {
    if (ts_model_matmul_dtype_from_name(name, out)) return CLI_CONTINUE;
    return cli_usage_error(command, "--dtype %s: expected f32 or bf16", name);
}

int cli_failure(const char *command, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "tessera %s: ", command);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    return CLI_EXIT_FAILURE;
}

static bool is_help(const char *arg) { return strcmp(arg, "--help") == 0 || strcmp(arg, "-h") == 0; }

static bool is_positional(const cli_option *o) { return o->kind == CLI_OPT_LIST && o->name[0] != '-'; }

static const cli_option *positional_option(const cli_spec *spec) {
    for (int i = 0; i < spec->n_options; i++)
        if (is_positional(&spec->options[i])) return &spec->options[i];
    return NULL;
}

/* ---------------------------------------------------------------- help */

static void format_default(const cli_option *o, char *buf, size_t size) {
    buf[0] = '\0';
    switch (o->kind) {
    case CLI_OPT_FLAG:
    case CLI_OPT_LIST: break;
    case CLI_OPT_INT: snprintf(buf, size, " (default: %d)", *(const int *)o->target); break;
    case CLI_OPT_FLOAT: snprintf(buf, size, " (default: %g)", (double)*(const float *)o->target); break;
    case CLI_OPT_U64: snprintf(buf, size, " (default: %llu)", (unsigned long long)*(const uint64_t *)o->target); break;
    case CLI_OPT_STRING: {
        const char *v = *(const char *const *)o->target;
        if (v) snprintf(buf, size, " (default: %s)", v);
        break;
    }
    }
}

void cli_print_help(const cli_spec *spec, FILE *out) {
    const cli_option *words = positional_option(spec);
    fprintf(out, "usage: tessera %s%s%s%s\n\n%s\n", spec->command, spec->n_options > (words != NULL) ? " [options]" : "",
            words ? " " : "", words ? words->name : "", spec->summary);
    fprintf(out, "\noptions:\n");
    for (int i = 0; i < spec->n_options; i++) {
        const cli_option *o = &spec->options[i];
        char left[64], def[96];
        if (o->kind == CLI_OPT_FLAG || is_positional(o)) snprintf(left, sizeof left, "%s", o->name);
        else snprintf(left, sizeof left, "%s %s", o->name, o->metavar ? o->metavar : "VALUE");
        format_default(o, def, sizeof def);
        fprintf(out, "  %-22s %s%s\n", left, o->help, def);
    }
    fprintf(out, "  %-22s %s\n", "-h, --help", "show this help and exit");
    if (spec->details) fprintf(out, "\n%s\n", spec->details);
}

/* ---------------------------------------------------------------- values */

static int out_of_range(const cli_spec *spec, const cli_option *o, const char *text) {
    return cli_usage_error(spec->command, "%s: %s is outside [%g, %g]", o->name, text, o->min, o->max);
}

static int list_append(const cli_spec *spec, const char *what, cli_list *list, const char *text) {
    if (list->n == CLI_LIST_MAX) return cli_usage_error(spec->command, "%s: more than %d values", what, CLI_LIST_MAX);
    list->items[list->n++] = text;
    return CLI_CONTINUE;
}

/* Converts text into o's target; returns CLI_CONTINUE or an exit code after an error line. */
static int store_value(const cli_spec *spec, const cli_option *o, const char *text) {
    char *end = NULL;
    errno = 0;
    switch (o->kind) {
    case CLI_OPT_INT: {
        long v = strtol(text, &end, 10);
        if (end == text || *end || errno) return cli_usage_error(spec->command, "%s: '%s' is not an integer", o->name, text);
        if ((double)v < o->min || (double)v > o->max) return out_of_range(spec, o, text);
        *(int *)o->target = (int)v;
        break;
    }
    case CLI_OPT_FLOAT: {
        double v = strtod(text, &end);
        if (end == text || *end || errno || !isfinite(v))
            return cli_usage_error(spec->command, "%s: '%s' is not a number", o->name, text);
        if (v < o->min || v > o->max) return out_of_range(spec, o, text);
        *(float *)o->target = (float)v;
        break;
    }
    case CLI_OPT_U64: {
        unsigned long long v = strtoull(text, &end, 10);
        if (end == text || *end || errno || text[0] == '-')
            return cli_usage_error(spec->command, "%s: '%s' is not a non-negative integer", o->name, text);
        *(uint64_t *)o->target = (uint64_t)v;
        break;
    }
    case CLI_OPT_STRING: *(const char **)o->target = text; break;
    case CLI_OPT_FLAG: *(bool *)o->target = true; break;
    case CLI_OPT_LIST: return list_append(spec, o->name, (cli_list *)o->target, text);
    }
    return CLI_CONTINUE;
}

/* The option whose name is arg, or arg up to '=' (then *inline_value points after it). */
static const cli_option *find_option(const cli_spec *spec, const char *arg, const char **inline_value) {
    const char *eq = strchr(arg, '=');
    size_t len = eq ? (size_t)(eq - arg) : strlen(arg);
    *inline_value = eq ? eq + 1 : NULL;
    for (int i = 0; i < spec->n_options; i++)
        if (strlen(spec->options[i].name) == len && strncmp(spec->options[i].name, arg, len) == 0)
            return &spec->options[i];
    return NULL;
}

int cli_parse(const cli_spec *spec, int argc, char **argv) {
    for (int i = 1; i < argc; i++) {
        const char *arg = argv[i];
        if (is_help(arg)) {
            cli_print_help(spec, stdout);
            return CLI_EXIT_OK;
        }
        if (arg[0] != '-') {
            const cli_option *words = positional_option(spec);
            if (!words) return cli_usage_error(spec->command, "unexpected argument '%s'", arg);
            int rc = list_append(spec, words->name, (cli_list *)words->target, arg);
            if (rc != CLI_CONTINUE) return rc;
            continue;
        }
        const char *value;
        const cli_option *o = find_option(spec, arg, &value);
        if (!o) return cli_usage_error(spec->command, "unknown option '%s'", arg);
        if (o->kind == CLI_OPT_FLAG) {
            if (value) return cli_usage_error(spec->command, "%s takes no value", o->name);
        } else if (o->kind == CLI_OPT_LIST && !value) {
            if (i + 1 >= argc || argv[i + 1][0] == '-') return cli_usage_error(spec->command, "%s needs a value", o->name);
            for (; i + 1 < argc && argv[i + 1][0] != '-'; i++) {
                int rc = list_append(spec, o->name, (cli_list *)o->target, argv[i + 1]);
                if (rc != CLI_CONTINUE) return rc;
            }
            continue;
        } else if (!value) {
            if (i + 1 >= argc) return cli_usage_error(spec->command, "%s needs a value", o->name);
            value = argv[++i];
        }
        int rc = store_value(spec, o, value);
        if (rc != CLI_CONTINUE) return rc;
    }
    return CLI_CONTINUE;
}

/* ---------------------------------------------------------------- subcommands */

static void print_subcommands(const char *command, const cli_subcommand *subs, int n_subs, FILE *out) {
    fprintf(out, "usage: tessera %s <subcommand> [options]\n\nsubcommands:\n", command);
    for (int i = 0; i < n_subs; i++) fprintf(out, "  %-10s %s\n", subs[i].name, subs[i].summary);
    fprintf(out, "\n'tessera %s <subcommand> --help' describes a subcommand's options.\n", command);
}

int cli_dispatch(const char *command, const cli_subcommand *subs, int n_subs, int argc, char **argv) {
    if (argc < 2) {
        print_subcommands(command, subs, n_subs, stderr);
        return CLI_EXIT_USAGE;
    }
    if (is_help(argv[1])) {
        print_subcommands(command, subs, n_subs, stdout);
        return CLI_EXIT_OK;
    }
    for (int i = 0; i < n_subs; i++)
        if (strcmp(argv[1], subs[i].name) == 0) return subs[i].run(argc - 1, argv + 1);
    return cli_usage_error(command, "unknown subcommand '%s'", argv[1]);
}
