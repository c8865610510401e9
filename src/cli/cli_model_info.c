/* cli_model_info.c - prints what a model configuration amounts to: its shape, parameters (total
 * and active, with and without the MTP block), FLOPs per token, KV-cache bytes and a training
 * memory estimate, all from model.h's accounting. `tessera info --model` calls it. Output is
 * "key: value" lines with plain integers so scripts and tests can grep them; a few lines
 * repeat the numbers in human units. */
#include "cli/cli_model_info.h"

#include "tessera/model.h"

#include <inttypes.h>
#include <string.h>

/* "290.94 B", "8.17 M", "12.3 k" */
static const char *human_count(double v, char *buf, size_t size) {
    static const char *const units[] = {"", " k", " M", " B", " T"};
    int u = 0;
    while (v >= 1000 && u < 4) {
        v /= 1000;
        u++;
    }
    snprintf(buf, size, u ? "%.2f%s" : "%.0f%s", v, units[u]);
    return buf;
}

/* "1.50 GiB" */
static const char *human_bytes(double v, char *buf, size_t size) {
    static const char *const units[] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB"};
    int u = 0;
    while (v >= 1024 && u < 5) {
        v /= 1024;
        u++;
    }
    snprintf(buf, size, u ? "%.2f %s" : "%.0f %s", v, units[u]);
    return buf;
}

static void print_dense_shape(const ts_v4_config *c, FILE *out) {
    fprintf(out, "shape:      vocab %" PRId64 ", hidden %" PRId64 ", %" PRId64 " layers, %" PRId64 " heads x %" PRId64
                 ", SwiGLU %" PRId64 ", %s embeddings\n",
            c->vocab_size, c->hidden_size, c->num_hidden_layers, c->num_attention_heads, c->head_dim, c->intermediate_size,
            c->tie_word_embeddings ? "tied" : "untied");
    fprintf(out, "rope:       theta %g, max positions %" PRId64 "\n", c->rope_theta, c->max_position_embeddings);
}

/* compress_ratios as a list, then how many layers of each type. */
static void print_v4_attention(const ts_v4_config *c, FILE *out) {
    int64_t csa = 0, hca = 0, window = 0, hca_ratio = 0;
    fprintf(out, "attention:  window %" PRId64 "; compress_ratios [", c->sliding_window);
    for (int64_t i = 0; i < ts_v4_n_layer_slots(c); i++) {
        int r = c->compress_ratios[i];
        fprintf(out, "%s%d", i ? "," : "", r);
        if (i >= c->num_hidden_layers) continue;
        if (r == TS_V4_RATIO_CSA) csa++;
        else if (r > 0) {
            hca++;
            hca_ratio = r;
        } else {
            window++;
        }
    }
    fprintf(out, "]\n");
    fprintf(out, "layers:     %" PRId64 " CSA (indexer %" PRId64 " x %" PRId64 ", top-%" PRId64 "), %" PRId64
                 " HCA (ratio %" PRId64 "), %" PRId64 " window-only, %" PRId64 " MTP\n",
            csa, c->index_n_heads, c->index_head_dim, c->index_topk, hca, hca_ratio, window, c->num_nextn_predict_layers);
}

static void print_v4_shape(const ts_v4_config *c, FILE *out) {
    fprintf(out, "shape:      vocab %" PRId64 ", hidden %" PRId64 ", %" PRId64 " layers + %" PRId64 " MTP, %" PRId64
                 " heads x %" PRId64 " (rope %" PRId64 "), q_lora %" PRId64 ", output %" PRId64 " groups x %" PRId64 "\n",
            c->vocab_size, c->hidden_size, c->num_hidden_layers, c->num_nextn_predict_layers, c->num_attention_heads, c->head_dim,
            c->qk_rope_head_dim, c->q_lora_rank, c->o_groups, c->o_lora_rank);
    print_v4_attention(c, out);
    fprintf(out, "moe:        %" PRId64 " routed experts (top-%" PRId64 ", width %" PRId64 ") + %" PRId64 " shared, %" PRId64
                 " hash layers, %s, route scale %g, swiglu limit %g\n",
            c->n_routed_experts, c->num_experts_per_tok, c->moe_intermediate_size, c->n_shared_experts, c->num_hash_layers,
            ts_score_func_name(c->scoring_func), c->routed_scaling_factor, c->swiglu_limit);
    fprintf(out, "mhc:        hc_mult %" PRId64 ", sinkhorn %" PRId64 " iterations\n", c->hc_mult, c->hc_sinkhorn_iters);
    fprintf(out, "rope:       theta %g (window-only), %g (compressed)", c->rope_theta, c->compress_rope_theta);
    if (c->rope_scaling.enabled)
        fprintf(out, ", yarn x%g over %" PRId64, c->rope_scaling.factor, c->rope_scaling.original_max_position_embeddings);
    fprintf(out, ", max positions %" PRId64 "\n", c->max_position_embeddings);
    fprintf(out, "numerics:   %s weights", ts_dtype_name(c->torch_dtype));
    if (c->quantization.fp8)
        fprintf(out, ", fp8 e4m3 linears (%" PRId64 "x%" PRId64 " blocks)", c->quantization.weight_block_size[0],
                c->quantization.weight_block_size[1]);
    fprintf(out, ", experts %s\n", ts_dtype_name(c->expert_dtype));
}

static void print_params(const ts_model_param_counts *p, FILE *out) {
    char a[32], b[32], c[32], d[32];
    fprintf(out, "parameters_total: %" PRId64 "\n", p->total);
    fprintf(out, "parameters_active: %" PRId64 "\n", p->active);
    fprintf(out, "parameters_total_without_mtp: %" PRId64 "\n", p->total_without_mtp);
    fprintf(out, "parameters_active_without_mtp: %" PRId64 "\n", p->active_without_mtp);
    fprintf(out, "parameters: %s total (%s without MTP), %s active per token (%s without MTP); embedding counted as active\n",
            human_count((double)p->total, a, sizeof a), human_count((double)p->total_without_mtp, b, sizeof b),
            human_count((double)p->active, c, sizeof c), human_count((double)p->active_without_mtp, d, sizeof d));
}

static void print_costs(const ts_model_flops *f, const ts_model_kv_cache *kv, const ts_model_train_memory *m, FILE *out) {
    char a[32], b[32], c[32], d[32], e[32];
    fprintf(out, "context: %" PRId64 "\n", f->context);
    fprintf(out, "flops_per_token_forward: %" PRId64 "\n", f->forward);
    fprintf(out, "flops_per_token_forward_with_mtp: %" PRId64 "\n", f->forward_with_mtp);
    fprintf(out, "flops_per_token_training: %" PRId64 "\n", f->training);
    fprintf(out, "flops: %sFLOP/token forward at context %" PRId64 " (attention %sFLOP), %sFLOP/token training\n",
            human_count((double)f->forward, a, sizeof a), f->context, human_count((double)f->attention, b, sizeof b),
            human_count((double)f->training, c, sizeof c));
    fprintf(out, "kv_cache_bytes_per_token: %.1f\n", kv->bytes_per_token);
    fprintf(out, "kv_cache_bytes_total: %" PRId64 "\n", kv->total_bytes);
    fprintf(out, "kv_cache: %s for %" PRId64 " tokens (window %s, compressed %s, indexer %s, compressor state %s)\n",
            human_bytes((double)kv->total_bytes, a, sizeof a), kv->context, human_bytes((double)kv->window_bytes, b, sizeof b),
            human_bytes((double)kv->compressed_bytes, c, sizeof c), human_bytes((double)kv->indexer_bytes, d, sizeof d),
            human_bytes((double)kv->state_bytes, e, sizeof e));
    fprintf(out, "train_batch: %" PRId64 "\n", m->batch);
    fprintf(out, "train_seq: %" PRId64 "\n", m->seq);
    fprintf(out, "training_memory_bytes: %" PRId64 "\n", m->total_bytes);
    fprintf(out, "training_memory: %s (fp32 weights %s, grads %s, optimizer %s, activations %s)\n",
            human_bytes((double)m->total_bytes, a, sizeof a), human_bytes((double)m->weight_bytes, b, sizeof b),
            human_bytes((double)m->grad_bytes, c, sizeof c), human_bytes((double)m->optimizer_bytes, d, sizeof d),
            human_bytes((double)m->activation_bytes, e, sizeof e));
}

static int fail_line(FILE *err, const char *model_arg, const char *what, ts_status s) {
    fprintf(err, "tessera info: --model %s: %s (%s)\n", model_arg, what, ts_status_name(s));
    return 2;
}

int ts_cli_print_model_info(const char *model_arg, int64_t context, int64_t batch, int64_t seq, FILE *out, FILE *err) {
    ts_v4_config cfg;
    char msg[512];
    if (!model_arg || !*model_arg) {
        fprintf(err, "tessera info: --model needs a preset name or a config.json path\n");
        return 2;
    }
    ts_status s = ts_v4_config_resolve(model_arg, &cfg, msg, sizeof msg);
    if (s != TS_OK) {
        fprintf(err, "tessera info: --model: %s\n", msg);
        return 2;
    }
    if (context <= 0) context = cfg.max_position_embeddings > 0 ? cfg.max_position_embeddings : 4096;
    if (seq <= 0) seq = context < 4096 ? context : 4096;
    if (batch <= 0) batch = 1;

    ts_model_param_counts params;
    ts_model_flops flops;
    ts_model_kv_cache kv;
    ts_model_train_memory mem;
    if ((s = ts_model_count_params(&cfg, &params)) != TS_OK) return fail_line(err, model_arg, "cannot count parameters", s);
    if ((s = ts_model_flops_per_token(&cfg, context, &flops)) != TS_OK) return fail_line(err, model_arg, "cannot count FLOPs", s);
    if ((s = ts_model_kv_cache_bytes(&cfg, context, &kv)) != TS_OK) return fail_line(err, model_arg, "cannot size the KV cache", s);
    if ((s = ts_model_train_memory_estimate(&cfg, batch, seq, &mem)) != TS_OK)
        return fail_line(err, model_arg, "cannot estimate training memory", s);

    ts_v4_config scratch;
    bool preset = ts_v4_preset(model_arg, &scratch) == TS_OK;
    fprintf(out, "model:      %s (%s)\n", model_arg, preset ? "preset" : "config.json");
    fprintf(out, "kind:       %s\n", ts_model_kind_name(cfg.kind));
    if (cfg.kind == TS_MODEL_DENSE) print_dense_shape(&cfg, out);
    else print_v4_shape(&cfg, out);
    print_params(&params, out);
    print_costs(&flops, &kv, &mem, out);
    return 0;
}
