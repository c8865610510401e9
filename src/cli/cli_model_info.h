/* cli_model_info.h - the model report behind `tessera info --model NAME|config.json`: shape
 * summary, parameter counts, FLOPs, KV cache and training memory from model.h's accounting.
 * Kept apart from cli.h so the info command can include it without owning it. */
#ifndef TS_CLI_MODEL_INFO_H
#define TS_CLI_MODEL_INFO_H

#include <stdint.h>
#include <stdio.h>

/* model_arg: a preset name (tiny, small, flash, pro, dense-tiny, dense-small), a config.json path
 * or a checkpoint directory. context: positions seen by the token whose FLOPs and KV cache are
 * reported (<= 0: the config's max_position_embeddings, or 4096 when it states none). batch,
 * seq: the training step for the memory estimate (<= 0: 1 and min(context, 4096)).
 * Prints "key: value" lines to out, among them exactly "parameters_total: N" and
 * "parameters_active: N" (plain integers, MTP included). Returns 0, or prints one error line to
 * err and returns 2. */
int ts_cli_print_model_info(const char *model_arg, int64_t context, int64_t batch, int64_t seq, FILE *out, FILE *err);

#endif
