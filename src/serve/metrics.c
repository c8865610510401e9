/* metrics.c - the counters behind GET /metrics and their Prometheus text form. Requests are
 * counted by HTTP status when answered; prompt tokens when a request is admitted, generated
 * tokens as they reach the HTTP side. Throughput gauges average the last METRIC_WINDOW whole
 * seconds, kept as per-second buckets (a bucket whose second has passed out of the window is
 * reset before reuse), so they need no background thread. The engine's own figures (KV-cache
 * occupancy, prefix-cache reuse, prefilled tokens) come from its stats() at render time. */
#include <stdlib.h>

#include "serve/serve_internal.h"

void metrics_init(metrics *m) {
    *m = (metrics){0};
    pthread_mutex_init(&m->mu, NULL);
}

void metrics_destroy(metrics *m) { pthread_mutex_destroy(&m->mu); }

void metrics_count_status(metrics *m, int status) {
    if (status < 100 || status >= 600) return;
    pthread_mutex_lock(&m->mu);
    m->by_status[status]++;
    pthread_mutex_unlock(&m->mu);
}

void metrics_add_tokens(metrics *m, int64_t prompt, int64_t generated) {
    if (!prompt && !generated) return;
    int64_t sec = (int64_t)ts_time_seconds();
    int slot = (int)(sec % METRIC_WINDOW);
    pthread_mutex_lock(&m->mu);
    m->prompt_tokens += prompt;
    m->generation_tokens += generated;
    if (m->window_second[slot] != sec) {
        m->window_second[slot] = sec;
        m->window_prompt[slot] = m->window_generation[slot] = 0;
    }
    m->window_prompt[slot] += prompt;
    m->window_generation[slot] += generated;
    pthread_mutex_unlock(&m->mu);
}

static void metric_head(sbuf *b, const char *name, const char *type, const char *help) {
    sbuf_printf(b, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

char *metrics_render(metrics *m, const ts_engine_stats *es, int in_flight) {
    sbuf b = {0};
    int64_t now = (int64_t)ts_time_seconds(), wp = 0, wg = 0;
    pthread_mutex_lock(&m->mu);
    metric_head(&b, "tessera_requests_total", "counter", "HTTP requests answered, by status code.");
    for (int s = 100; s < 600; s++)
        if (m->by_status[s]) sbuf_printf(&b, "tessera_requests_total{status=\"%d\"} %lld\n", s, (long long)m->by_status[s]);
    int64_t prompt = m->prompt_tokens, generated = m->generation_tokens;
    for (int i = 0; i < METRIC_WINDOW; i++)
        if (m->window_second[i] > now - METRIC_WINDOW) wp += m->window_prompt[i], wg += m->window_generation[i];
    pthread_mutex_unlock(&m->mu);
    metric_head(&b, "tessera_prompt_tokens_total", "counter", "Prompt tokens of admitted requests.");
    sbuf_printf(&b, "tessera_prompt_tokens_total %lld\n", (long long)prompt);
    metric_head(&b, "tessera_generation_tokens_total", "counter", "Generated tokens delivered.");
    sbuf_printf(&b, "tessera_generation_tokens_total %lld\n", (long long)generated);
    metric_head(&b, "tessera_prompt_tokens_per_second", "gauge", "Prompt tokens admitted per second, last 10 s.");
    sbuf_printf(&b, "tessera_prompt_tokens_per_second %.3f\n", (double)wp / METRIC_WINDOW);
    metric_head(&b, "tessera_generation_tokens_per_second", "gauge", "Generated tokens per second, last 10 s.");
    sbuf_printf(&b, "tessera_generation_tokens_per_second %.3f\n", (double)wg / METRIC_WINDOW);
    metric_head(&b, "tessera_kv_cache_usage_ratio", "gauge", "Fraction of the KV-cache pool in use.");
    sbuf_printf(&b, "tessera_kv_cache_usage_ratio %.6f\n", es->kv_cache_usage);
    metric_head(&b, "tessera_kv_cache_positions", "gauge",
                "KV-cache positions held: by running sequences, and kept by idle slots and checkpoints for prefix reuse.");
    sbuf_printf(&b, "tessera_kv_cache_positions{state=\"running\"} %lld\n", (long long)es->kv_positions_running);
    sbuf_printf(&b, "tessera_kv_cache_positions{state=\"cached\"} %lld\n", (long long)es->kv_positions_cached);
    metric_head(&b, "tessera_kv_cache_capacity_positions", "gauge", "KV-cache positions of the whole pool.");
    sbuf_printf(&b, "tessera_kv_cache_capacity_positions %lld\n", (long long)es->kv_positions_capacity);
    metric_head(&b, "tessera_kv_cache_bytes", "gauge", "Memory of the whole KV-cache pool.");
    sbuf_printf(&b, "tessera_kv_cache_bytes %lld\n", (long long)es->kv_bytes);
    metric_head(&b, "tessera_kv_cache_blocks", "gauge",
                "KV-cache pool blocks: free (held by no sequence) and in all (per-slot memory: one per slot).");
    sbuf_printf(&b, "tessera_kv_cache_blocks{state=\"free\"} %lld\n", (long long)es->kv_blocks_free);
    sbuf_printf(&b, "tessera_kv_cache_blocks{state=\"total\"} %lld\n", (long long)es->kv_blocks);
    metric_head(&b, "tessera_preemptions_total", "counter",
                "Running requests sent back to the queue (to be recomputed) for want of KV-cache blocks.");
    sbuf_printf(&b, "tessera_preemptions_total %lld\n", (long long)es->preemptions);
    metric_head(&b, "tessera_prefix_cache_hits_total", "counter", "Admitted requests that reused a cached prompt prefix.");
    sbuf_printf(&b, "tessera_prefix_cache_hits_total %lld\n", (long long)es->prefix_cache_hits);
    metric_head(&b, "tessera_prefix_cache_reused_tokens_total", "counter",
                "Prompt tokens taken from the prefix cache instead of prefilled.");
    sbuf_printf(&b, "tessera_prefix_cache_reused_tokens_total %lld\n", (long long)es->prefix_reused_tokens);
    metric_head(&b, "tessera_prefix_cache_checkpoints", "gauge",
                "Sequence states kept at block boundaries for prefix reuse (models whose caches rewind only a few tokens).");
    sbuf_printf(&b, "tessera_prefix_cache_checkpoints %lld\n", (long long)es->prefix_checkpoints);
    metric_head(&b, "tessera_prefill_tokens_total", "counter", "Prompt tokens run through the model.");
    sbuf_printf(&b, "tessera_prefill_tokens_total %lld\n", (long long)es->prefill_tokens);
    metric_head(&b, "tessera_forward_passes_total", "counter",
                "Forward passes of the model (prompt chunks and decode steps share them).");
    sbuf_printf(&b, "tessera_forward_passes_total %lld\n", (long long)es->forward_passes);
    metric_head(&b, "tessera_spec_draft_tokens_total", "counter", "Speculative decoding: draft tokens proposed.");
    sbuf_printf(&b, "tessera_spec_draft_tokens_total %lld\n", (long long)es->spec_drafted);
    metric_head(&b, "tessera_spec_accepted_tokens_total", "counter", "Speculative decoding: draft tokens accepted.");
    sbuf_printf(&b, "tessera_spec_accepted_tokens_total %lld\n", (long long)es->spec_accepted);
    metric_head(&b, "tessera_queue_length", "gauge", "Requests waiting in the engine for admission.");
    sbuf_printf(&b, "tessera_queue_length %lld\n", (long long)es->queued);
    metric_head(&b, "tessera_running_sequences", "gauge", "Sequences in the engine's running batch.");
    sbuf_printf(&b, "tessera_running_sequences %lld\n", (long long)es->running);
    metric_head(&b, "tessera_requests_in_flight", "gauge", "Generation requests being answered.");
    if (!sbuf_printf(&b, "tessera_requests_in_flight %d\n", in_flight)) sbuf_free(&b);
    return b.data;
}
