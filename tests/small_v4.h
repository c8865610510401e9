/* small_v4.h - a DeepSeek-V4 config small enough for tests that run whole training or serving
 * paths: the tiny preset with hidden 64, 3 layers whose compression ratios the test picks (and
 * the MTP block's), and an 8-token window, so a few dozen tokens cross several block bounds. */
#ifndef TS_TEST_SMALL_V4_H
#define TS_TEST_SMALL_V4_H

#include <string.h>

#include "tessera/model.h"

/* ratios: layers 0..2, then the MTP block. */
static inline void small_v4_config(ts_v4_config *c, const int32_t ratios[4]) {
    ts_v4_preset("tiny", c);
    c->hidden_size = 64;
    c->moe_intermediate_size = 32;
    c->q_lora_rank = 32;
    c->num_hidden_layers = 3;
    memset(c->compress_ratios, 0, sizeof c->compress_ratios);
    memcpy(c->compress_ratios, ratios, 4 * sizeof *ratios);
    c->sliding_window = 8;
}

#endif
