/* cli.h - what the files of the `tessera` command line share: the subcommand entry points
 * (one file each: cli_version.c, cli_info.c, cli_ops.c, cli_demo.c, cli_init.c) and a small declarative
 * option parser (cli_args.c) that gives every subcommand the same --help and the same one-line
 * errors. main.c holds the table of subcommands and dispatches to them. */
#ifndef TS_CLI_H
#define TS_CLI_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include "tessera/core.h"

/* Exit codes: 0 success, 1 the work itself failed, 2 the command line was wrong. */
enum { CLI_EXIT_OK = 0, CLI_EXIT_FAILURE = 1, CLI_EXIT_USAGE = 2 };
/* cli_parse's "carry on": the options were parsed and the command should run. */
#define CLI_CONTINUE (-1)

typedef enum { CLI_OPT_FLAG, CLI_OPT_INT, CLI_OPT_FLOAT, CLI_OPT_U64, CLI_OPT_STRING, CLI_OPT_LIST } cli_opt_kind;

/* The values of a CLI_OPT_LIST option (all the words after it up to the next "-..." word, and
 * again each time it is repeated: --input a b --input c) or a command's positional arguments.
 * The items point into argv; a fixed capacity keeps parsing free of allocation. */
#define CLI_LIST_MAX 256
typedef struct {
    const char *items[CLI_LIST_MAX];
    int n;
} cli_list;

/* One option. `target` points at a bool / int / float / uint64_t / const char * / cli_list
 * according to kind; its value before parsing is shown as the default in --help. Numbers must lie in
 * [min, max]. A CLI_OPT_LIST whose name does not start with '-' ("PATH...") receives the
 * command's positional words; without one, a positional word is an error. */
typedef struct {
    const char *name;    /* "--steps" */
    cli_opt_kind kind;
    void *target;
    const char *metavar; /* "N", "NAME"; unused for flags */
    const char *help;
    double min, max;
} cli_option;

typedef struct {
    const char *command; /* "demo" */
    const char *summary; /* one line: what the command does */
    const char *details; /* printed after the options, or NULL */
    const cli_option *options;
    int n_options;
} cli_spec;

/* Parses argv[1..argc-1] (argv[0] is the subcommand's name) into the option targets. Returns
 * CLI_CONTINUE when the command should run, CLI_EXIT_OK after printing --help, or
 * CLI_EXIT_USAGE after printing one error line to stderr. */
int cli_parse(const cli_spec *spec, int argc, char **argv);
/* The inference commands' --dtype (ts_model_load_for_inference): its help, and the check that
 * names a dtype it takes (else prints the usage error and returns CLI_EXIT_USAGE). */
#define CLI_DTYPE_HELP "matmul weights' dtype: f32, or bf16 (half the bytes per token; activations, caches, logits stay f32)"
int cli_matmul_dtype(const char *command, const char *name, ts_dtype *out);

void cli_print_help(const cli_spec *spec, FILE *out);
/* Prints "tessera CMD: message" plus a pointer to --help on stderr; returns CLI_EXIT_USAGE. */
int cli_usage_error(const char *command, const char *fmt, ...);
/* Prints "tessera CMD: message" on stderr; returns CLI_EXIT_FAILURE (the work itself failed). */
int cli_failure(const char *command, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;

/* The sampling options of generate and chat, into a ts_sampling_params p (infer.h; its --seed
 * each command declares itself); check the result with ts_sampling_params_check. */
#define CLI_SAMPLING_OPTIONS(p)                                                                                         \
    {"--temperature", CLI_OPT_FLOAT, &(p).temperature, "T", "0: greedy; else sample from softmax(logits / T)", 0, 100},   \
    {"--top-k", CLI_OPT_INT, &(p).top_k, "K", "sample among the K most likely tokens only (0: all)", 0, 1 << 30},        \
    {"--top-p", CLI_OPT_FLOAT, &(p).top_p, "P", "nucleus: the fewest most likely tokens holding probability P (1: off)", \
     0, 1},                                                                                                              \
    {"--min-p", CLI_OPT_FLOAT, &(p).min_p, "P", "drop tokens less likely than P x the most likely one (0: off)", 0, 1},  \
    {"--repeat-penalty", CLI_OPT_FLOAT, &(p).repetition_penalty, "R",                                                  \
     "divide (or multiply, when negative) the logits of tokens seen so far by R (1: off)", 0, 100},                      \
    {"--frequency-penalty", CLI_OPT_FLOAT, &(p).frequency_penalty, "F",                                                \
     "subtract F x each generated token's count from its logit (OpenAI's)", -2, 2},                                      \
    {"--presence-penalty", CLI_OPT_FLOAT, &(p).presence_penalty, "F",                                                  \
     "subtract F from the logit of every token generated so far (OpenAI's)", -2, 2}

/* Commands with subcommands ("tessera data prepare ..."): a table of these, and a dispatcher
 * that runs the row named by argv[1] with argv + 1 (so the subcommand sees its own name as
 * argv[0]); with no name or --help it lists the table. */
typedef struct {
    const char *name;
    const char *summary;
    int (*run)(int argc, char **argv);
} cli_subcommand;
int cli_dispatch(const char *command, const cli_subcommand *subs, int n_subs, int argc, char **argv);

/* Subcommands: argv[0] is the subcommand's name; the return value is the exit code. */
int cli_version_main(int argc, char **argv);
int cli_info_main(int argc, char **argv);
int cli_ops_main(int argc, char **argv);
int cli_demo_main(int argc, char **argv);
int cli_init_main(int argc, char **argv);
int cli_train_main(int argc, char **argv);
int cli_generate_main(int argc, char **argv);
int cli_serve_main(int argc, char **argv);
int cli_chat_main(int argc, char **argv);
int cli_forward_main(int argc, char **argv);
int cli_bench_main(int argc, char **argv);
int cli_tokenizer_main(int argc, char **argv);
int cli_data_main(int argc, char **argv);

#endif
