/* main.c - entry point of the `tessera` command: finds the subcommand in the table below and
 * hands it the rest of the command line. Each subcommand lives in its own cli_*.c file; adding
 * one means writing that file and adding a row here. */
#include <string.h>

#include "cli/cli.h"

typedef struct {
    const char *name;
    const char *summary;
    int (*run)(int argc, char **argv);
} cli_command;

static const cli_command commands[] = {
    {"version", "print the version and how this binary was built", cli_version_main},
    {"info", "describe this machine: CPU, SIMD features, backends, build options", cli_info_main},
    {"ops", "list which ops each backend supports", cli_ops_main},
    {"demo", "train a small MLP on a generated dataset and show the loss falling", cli_demo_main},
    {"init", "write a freshly initialised checkpoint (config.json + model.safetensors)", cli_init_main},
    {"generate", "continue a prompt with a trained model (incremental decoding), streaming the text", cli_generate_main},
    {"serve", "serve a model over HTTP: OpenAI-compatible completions and chat, continuous batching", cli_serve_main},
    {"chat", "chat with a model in the terminal (its chat template, the KV cache kept across turns)", cli_chat_main},
    {"train", "train a model (default: the tiny DeepSeek-V4 on the embedded synthetic tasks)", cli_train_main},
    {"forward", "run one forward pass over token ids: argmax per position, loss, logits as .npy", cli_forward_main},
    {"bench", "benchmarks: 'tessera bench gemm' (GEMM/GEMV vs FMA peak, read bandwidth, OpenBLAS)", cli_bench_main},
    {"tokenizer", "byte-level BPE: train a vocabulary (tokenizer.json), encode text, decode ids", cli_tokenizer_main},
    {"data", "training data: prepare token shards from text/JSONL, write the synthetic set, inspect a shard", cli_data_main},
};

#define COUNT(a) ((int)(sizeof(a) / sizeof((a)[0])))

static void print_help(FILE *out) {
    fprintf(out, "usage: tessera <command> [options]\n\n"
                 "Tessera: DeepSeek-V4-class training and inference in C, on any hardware.\n\ncommands:\n");
    for (int i = 0; i < COUNT(commands); i++) fprintf(out, "  %-10s %s\n", commands[i].name, commands[i].summary);
    fprintf(out, "\n'tessera <command> --help' describes a command's options.\n");
}

static const cli_command *find_command(const char *name) {
    for (int i = 0; i < COUNT(commands); i++)
        if (strcmp(commands[i].name, name) == 0) return &commands[i];
    return NULL;
}

static int unknown_command(const char *name) {
    if (name[0] == '-') return cli_usage_error(NULL, "unknown option '%s'", name);
    return cli_usage_error(NULL, "unknown command '%s'", name);
}

int main(int argc, char **argv) {
    if (argc < 2) {
        print_help(stderr);
        return CLI_EXIT_USAGE;
    }
    const char *name = argv[1];
    if (strcmp(name, "--help") == 0 || strcmp(name, "-h") == 0) {
        print_help(stdout);
        return CLI_EXIT_OK;
    }
    if (strcmp(name, "help") == 0) { /* "tessera help demo" == "tessera demo --help" */
        if (argc < 3) {
            print_help(stdout);
            return CLI_EXIT_OK;
        }
        const cli_command *c = find_command(argv[2]);
        if (!c) return unknown_command(argv[2]);
        char *help_argv[] = {argv[2], "--help", NULL};
        return c->run(2, help_argv);
    }
    if (strcmp(name, "--version") == 0) name = "version";
    const cli_command *c = find_command(name);
    if (!c) return unknown_command(name);
    argv[1] = (char *)c->name; /* the subcommand sees its own name as argv[0] */
    return c->run(argc - 1, argv + 1);
}
