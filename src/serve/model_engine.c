/* model_engine.c - the inference engine behind `tessera serve`: implements serve.h's ts_engine
 * table over the incremental decoder (model.h) with continuous batching, chunked prefill and
 * slot-level prefix caching.
 *
 * One worker thread owns the decoder. Each iteration it admits queued requests into idle slots
 * (a slot = one sequence's caches), then, with the lock released, runs ONE ts_model_decoder_batch
 * (vLLM's ragged batch; the dense decoder packs it into one forward pass, V4 into one per
 * chunk length, single tokens together): every generating
 * sequence's next token, plus prompt chunks of prefilling requests up to a budget of
 * prefill_chunk prompt tokens per iteration, handed out round-robin (so several long prompts
 * share the iterations; short ones share a budget). A generating stream therefore waits at
 * most one budget of prompt tokens per token however long the prompts that arrive are, and a
 * prompt costs n / budget iterations instead of n. When a prompt's last chunk is in, or after
 * each step, the sequence samples (one ts_sampler per slot, infer.h) and reports the token to
 * its sink; it ends at the stop token, at max_tokens, at the context limit, or when cancelled.
 * A failed batch (other than for want of blocks) fails every sequence in it.
 *
 * Prefix cache: a slot records the ids its decoder cache holds, and keeps them when its request
 * ends. A new request takes the longest prefix of its prompt that any slot holds, running or
 * idle: an idle slot holding it is rewound to it (ts_model_decoder_truncate), else the least
 * recently used idle slot gets a copy (ts_model_decoder_fork: the dense decoder shares the
 * blocks); a model that refuses either just tries the next best, down to an empty slot. Only
 * the rest of the prompt is prefilled; at least its last token is always fed, for the logits of
 * the first output. Ties go to idle slots, then to the least recently used, so fresh caches
 * live longest. A request that wants its prompt's log-probabilities (echo) reuses no prefix
 * whose logits it has not reported yet: its chunks keep every row of logits (as many as the
 * iteration's logits buffer has left), each row giving the next prompt token's, reported once
 * even when a preemption makes it prefill again.
 *
 * Prefix checkpoints: a model whose caches rewind only a few tokens (V4: the fixed state cache
 * holds the last ~16 positions; ts_model_decoder_pool's rewind) reuses none of a cached
 * sequence that has gone further than that past the shared part - requests sharing a system
 * prompt but not what follows would each compute it again. The engine then keeps extra decoder
 * slots (options.checkpoints) holding a sequence's state at a block boundary of the pool, taken
 * by forking a prefilling slot at the moment its length is that boundary (nothing to rewind;
 * whole blocks are shared, none copied). Policy: when a request is admitted, the deepest
 * boundary within the longest prefix some cache (a slot or a checkpoint) shares with its prompt
 * is its checkpoint, unless it reuses more than that: its prefill chunks are cut to end there
 * (it reused less: the source refused the rewind), or it is taken at once (it starts right
 * there: a fork of a prefill under way or an idle cache rewound there, both about to move on).
 * So the first request to repeat a prefix pays for it, and the later ones fork the checkpoint
 * (it stays) and prefill only the rest. Not every prompt's own deepest boundary: that lies in
 * its private part, and with few checkpoint slots it would push out the shared ones (a
 * conversation's next turn finds its idle slot, which holds the whole turn). A checkpoint
 * already holding the prefix is only touched; else an empty checkpoint slot, else the least
 * recently used one (taken or forked from) is replaced. Under memory pressure checkpoints are
 * evicted as idle caches are, least recently used first, before anyone is preempted. A model
 * that forks any prefix (dense) gets none.
 *
 * Memory: the decoder's pool (ts_model_decoder_pool_info). A shared pool of blocks (dense: the
 * KV cache; V4: the compressed entries, its slots owning the fixed state cache besides) may hold
 * fewer positions than slots x max_len: a request is admitted when the free blocks cover the rest of its prompt
 * plus one block per running sequence (their next steps), evicting idle slots' caches (least
 * recently used first) to get there; else it waits. When the pool still runs short (a step or
 * chunk returns TS_ERR_OOM, nothing appended), an idle cache is evicted, else the youngest
 * running request is preempted: its blocks go back and it returns to the queue front with its
 * prompt + the tokens it generated, its sampler state kept, to be recomputed when there is
 * room - its output is what it would have been without preemption (up to the rounding
 * differences between prefill and step logits). A request that finds no slot or no room waits
 * in a bounded queue, and a full queue is refused (HTTP 503).
 *
 * Speculative decoding (options.speculative): an iteration with no prompt chunk and a single
 * generating sequence runs one ts_speculator round for it, which may yield two tokens; other
 * iterations run their prompt chunks through ts_speculator_prefill, one by one, then the steps
 * (the MTP block must keep up with a prompt piece by piece, so under speculation prompt chunks
 * do not share the batch's passes). The MTP block lags the sequences it does not draft for (ts_model_decoder_mtp_lag), and a slot
 * about to step more than TS_MODEL_MTP_MAX_LAG / 2 tokens ahead of it first brings it up to date
 * with ts_model_decoder_mtp, so a round can start on any slot at any time. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tessera/data.h"
#include "tessera/serve.h"

typedef struct {
    uint64_t id;
    int32_t *prompt;
    size_t n_prompt;
    int32_t max_tokens;
    ts_sampling_params sampling;
    int32_t stop_ids[TS_GEN_MAX_STOP_IDS];
    int n_stop_ids;
    bool logprobs;       /* ts_gen_request's */
    int32_t top_logprobs;
    bool prompt_logprobs;
    int64_t prompt_lp_next; /* with prompt_logprobs: the next prompt position to report (from 1) */
    int64_t n_user_prompt;  /* the request's own prompt (n_prompt grows when it is preempted) */
    ts_gen_sink sink;
    bool cancelled;
    int32_t generated;   /* tokens reported already: a preempted request's prompt ends with them */
    ts_sampler *sampler; /* a preempted request's sampler, its state kept; NULL: a new request */
} pending;

typedef enum { SLOT_IDLE, SLOT_PREFILL, SLOT_DECODE } slot_phase;

typedef struct {
    slot_phase phase;
    pending req;       /* unless idle */
    int32_t *tokens;   /* [max_len]: the ids in the slot's decoder cache, kept while idle */
    int64_t n_tokens;  /* == ts_model_decoder_length of the slot, kept here for the lock's sake */
    int32_t last;      /* the last sampled token: the next step's input */
    int32_t generated;
    int64_t checkpoint_at; /* prefilling: the block boundary to checkpoint its state at (0: none) */
    uint64_t used_at;  /* when its last request ended, a checkpoint's when taken or forked from (engine clock) */
    uint64_t admitted_at; /* when its request was admitted: the youngest is preempted first */
    ts_sampler *sampler;
} slot_state;

struct ts_model_engine {
    ts_tokenizer *tok; /* NULL: byte-level vocabulary */
    int32_t vocab, eos;
    ts_model_decoder *dec;
    ts_model_decoder_pool pool; /* as of the worker's last look (free_blocks) */
    ts_model_engine_options opt;
    int n_checkpoints; /* checkpoint slots: slots[opt.slots .. opt.slots + n_checkpoints), never running */
    size_t kv_bytes;
    slot_state *slots;
    pending *queue;
    int queue_len;
    int prefill_rr;    /* the slot that prefilled last */
    int64_t passes;    /* the decoder's forward passes, as of the worker's last compute */
    uint64_t clock;
    int64_t prefix_hits, reused_tokens, prefill_tokens, preemptions;
    bool pool_short;   /* the last compute ran out of pool blocks */
    ts_sampler **spare; /* [slots]: samplers in neither a slot nor a preempted request (at most
                           one preempted request per slot waits: they are readmitted first) */
    int n_spare;
    ts_speculator *spec;   /* NULL unless options.speculative */
    pthread_mutex_t mu;
    pthread_cond_t wake;
    pthread_t worker;
    bool stop, started;
    /* worker scratch */
    ts_model_decoder_seq *batch; /* [slots]: the iteration's sequences */
    float *logits;         /* [slots, vocab]: the batch's (at most one row per sequence) */
    float *spare_logits;   /* [vocab], speculative: the MTP catch-ups' and unwanted prefill logits */
    int64_t *reuse;        /* [slots + checkpoints]: placement candidates */
    ts_token_logprobs lp;  /* the token being delivered's, when its request asked */
};

/* ---------------------------------------------------------------- admission and prefix reuse */

static void finish(ts_model_engine *e, int s, ts_gen_end end) {
    slot_state *sl = &e->slots[s];
    ts_gen_sink sink = sl->req.sink;
    free(sl->req.prompt);
    sl->phase = SLOT_IDLE;
    sl->used_at = ++e->clock;
    sink.done(sink.user, end);
}

/* Drops slot s's cache (its blocks go back to a shared pool). */
static void empty_slot(ts_model_engine *e, int s) {
    ts_model_decoder_reset(e->dec, s);
    e->slots[s].n_tokens = 0;
}

/* A failed decoder call may leave the slot's cache half-written: it is emptied, not reused. */
static void fail(ts_model_engine *e, int s) {
    empty_slot(e, s);
    finish(e, s, TS_GEN_ERROR);
}

static int64_t common_prefix(const int32_t *a, int64_t na, const int32_t *b, int64_t nb) {
    int64_t n = na < nb ? na : nb, i = 0;
    while (i < n && a[i] == b[i]) i++;
    return i;
}

static bool running(const slot_state *sl) { return sl->phase != SLOT_IDLE; }

static int all_slots(const ts_model_engine *e) { return e->opt.slots + e->n_checkpoints; }

/* Whether slot s keeps its sequence when it is a prefix source (forked from, never rewound): a
 * running one, or a checkpoint. */
static bool keeps(const ts_model_engine *e, int s) { return s >= e->opt.slots || running(&e->slots[s]); }

/* Whether slot a is a better prefix source than b: a longer prefix; equal, an idle slot (no
 * copy), then the least recently used. */
static bool better_source(const ts_model_engine *e, int a, int b) {
    if (e->reuse[a] != e->reuse[b]) return e->reuse[a] > e->reuse[b];
    if (keeps(e, a) != keeps(e, b)) return !keeps(e, a);
    return e->slots[a].used_at < e->slots[b].used_at;
}

/* Whether a prefill under way will hold at least a block more of prompt p than the `have`
 * tokens any slot offers now: then p had better wait for it than compute it again (requests
 * arriving together with the same system prompt). Shared pools only, where a fork shares blocks
 * (V4 refuses one further back than its rewind bound: p then places as it would have, once the
 * prefill is done). */
static bool prefix_coming(const ts_model_engine *e, const pending *p, int64_t have) {
    for (int s = 0; e->pool.shared && s < e->opt.slots; s++) {
        const slot_state *sl = &e->slots[s];
        if (sl->phase == SLOT_PREFILL &&
            common_prefix(sl->req.prompt, (int64_t)sl->req.n_prompt, p->prompt, (int64_t)p->n_prompt - 1) >=
                have + e->pool.block_positions)
            return true;
    }
    return false;
}

/* Fills an idle slot with the longest prefix of prompt p any slot or checkpoint holds (its
 * n_tokens then; *forked: copied from a running one or a checkpoint) and returns it; -1 when
 * every slot is busy, or when a prefill under way is about to offer more. *shared: the longest
 * prefix any of them holds, reusable or not. reuse[s]: what slot s offers (-1: nothing left to
 * try); an idle slot's own rewind the model refuses leaves it a candidate, empty. */
static int place(ts_model_engine *e, const pending *p, bool *forked, int64_t *shared) {
    int lru = -1;
    int64_t have = 0;
    for (int s = 0; s < all_slots(e); s++) {
        const slot_state *sl = &e->slots[s];
        if (!keeps(e, s) && (lru < 0 || sl->used_at < e->slots[lru].used_at)) lru = s;
        int64_t common = e->opt.prefix_cache ? common_prefix(sl->tokens, sl->n_tokens, p->prompt, (int64_t)p->n_prompt) : 0;
        if (p->prompt_logprobs && common > p->prompt_lp_next - 1) common = p->prompt_lp_next - 1; /* their logits */
        e->reuse[s] = common < (int64_t)p->n_prompt ? common : (int64_t)p->n_prompt - 1;
        if (keeps(e, s) && e->reuse[s] == 0) e->reuse[s] = -1;
        have = e->reuse[s] > have ? e->reuse[s] : have;
    }
    *shared = have;
    if (lru < 0 || (e->opt.prefix_cache && prefix_coming(e, p, have))) return -1;
    for (;;) {
        int best = -1;
        for (int s = 0; s < all_slots(e); s++)
            if (e->reuse[s] >= 0 && (best < 0 || better_source(e, s, best))) best = s;
        slot_state *src = &e->slots[best];
        if (!keeps(e, best) && ts_model_decoder_truncate(e->dec, best, e->reuse[best]) == TS_OK) { /* 0 always works */
            src->n_tokens = e->reuse[best];
            return best;
        }
        if (keeps(e, best) && ts_model_decoder_fork(e->dec, lru, best, e->reuse[best]) == TS_OK) {
            slot_state *dst = &e->slots[lru];
            memcpy(dst->tokens, src->tokens, (size_t)e->reuse[best] * sizeof(int32_t));
            dst->n_tokens = e->reuse[best];
            if (!running(src)) src->used_at = ++e->clock; /* a checkpoint: recently used */
            *forked = true;
            return lru;
        }
        e->reuse[best] = keeps(e, best) ? -1 : 0;
    }
}

/* The block boundary a request placed with `reused` tokens of its prompt, which shares `shared`
 * with some cache, checkpoints at (0: none; the policy is the file comment's). */
static int64_t checkpoint_target(const ts_model_engine *e, int64_t shared, int64_t reused) {
    int64_t at = e->n_checkpoints > 0 ? shared / e->pool.block_positions * e->pool.block_positions : 0;
    return at >= reused ? at : 0;
}

/* Whether checkpoint slot a is a better one to replace than b: empty, then least recently used. */
static bool replace_first(const ts_model_engine *e, int a, int b) {
    const slot_state *x = &e->slots[a], *y = &e->slots[b];
    if ((x->n_tokens == 0) != (y->n_tokens == 0)) return x->n_tokens == 0;
    return x->used_at < y->used_at;
}

/* Keeps a copy of slot s's sequence (its length a block boundary: the copy shares whole blocks
 * and takes none) in a checkpoint slot: the one holding it already is only touched; else an
 * empty one or the least recently used is replaced. A fork the model refuses changes nothing. */
static void take_checkpoint(ts_model_engine *e, int s) {
    const slot_state *sl = &e->slots[s];
    int c = -1;
    for (int k = e->opt.slots; k < all_slots(e); k++) {
        slot_state *ck = &e->slots[k];
        if (ck->n_tokens == sl->n_tokens && !memcmp(ck->tokens, sl->tokens, (size_t)sl->n_tokens * sizeof(int32_t))) {
            ck->used_at = ++e->clock;
            return;
        }
        if (c < 0 || replace_first(e, k, c)) c = k;
    }
    if (c < 0 || ts_model_decoder_fork(e->dec, c, s, sl->n_tokens) != TS_OK) return;
    slot_state *ck = &e->slots[c];
    memcpy(ck->tokens, sl->tokens, (size_t)sl->n_tokens * sizeof(int32_t));
    ck->n_tokens = sl->n_tokens;
    ck->used_at = ++e->clock;
}

static int64_t blocks_for(const ts_model_engine *e, int64_t positions) {
    return (positions + e->pool.block_positions - 1) / e->pool.block_positions;
}

/* The pool's free blocks now, also kept in e->pool for stats (which must not read the decoder
 * while the worker computes; the rest of e->pool never changes). Worker, under the lock. */
static int64_t free_blocks(ts_model_engine *e) {
    ts_model_decoder_pool now;
    ts_model_decoder_pool_info(e->dec, &now);
    return e->pool.free_blocks = now.free_blocks;
}

/* Empties the least recently used idle slot or checkpoint that holds a cache, other than `keep`;
 * false when there is none. */
static bool evict_idle(ts_model_engine *e, int keep) {
    int victim = -1;
    for (int s = 0; s < all_slots(e); s++) {
        const slot_state *sl = &e->slots[s];
        if (s != keep && !running(sl) && sl->n_tokens > 0 && (victim < 0 || sl->used_at < e->slots[victim].used_at))
            victim = s;
    }
    if (victim < 0) return false;
    empty_slot(e, victim);
    return true;
}

/* Whether a shared pool has room for prompt p in slot s (placed: it holds n_tokens): blocks for
 * the rest of the prompt, a copy of a partly filled shared last block, and one block per
 * running sequence; idle caches are evicted until it does, or none is left. */
static bool has_room(ts_model_engine *e, int s, const pending *p) {
    if (!e->pool.shared) return true;
    int64_t held = e->slots[s].n_tokens, need = blocks_for(e, (int64_t)p->n_prompt) - blocks_for(e, held);
    need += held % e->pool.block_positions != 0;
    for (int i = 0; i < e->opt.slots; i++) need += running(&e->slots[i]);
    while (free_blocks(e) < need)
        if (!evict_idle(e, s)) return false;
    return true;
}

/* A preempted request resumes with its own sampler (the slot's goes to the spares). shared: the
 * longest prefix of its prompt some cache holds (place). */
static void start(ts_model_engine *e, int s, pending p, int64_t shared) {
    slot_state *sl = &e->slots[s];
    sl->phase = SLOT_PREFILL;
    sl->req = p;
    sl->generated = p.generated;
    sl->checkpoint_at = checkpoint_target(e, shared, sl->n_tokens);
    if (sl->checkpoint_at > 0 && sl->checkpoint_at == sl->n_tokens) take_checkpoint(e, s);
    sl->admitted_at = ++e->clock;
    if (sl->n_tokens > 0) {
        e->prefix_hits++;
        e->reused_tokens += sl->n_tokens;
    }
    if (p.sampler) {
        e->spare[e->n_spare++] = sl->sampler;
        sl->sampler = p.sampler;
        sl->req.sampler = NULL;
    } else if (ts_sampler_start(sl->sampler, &p.sampling, p.prompt, p.n_prompt) != TS_OK) {
        finish(e, s, TS_GEN_ERROR);
    }
}

/* Ends a request that never got (back) into a slot. */
static void drop(ts_model_engine *e, pending *p, ts_gen_end end) {
    if (p->sampler) e->spare[e->n_spare++] = p->sampler;
    free(p->prompt);
    p->sink.done(p->sink.user, end);
}

/* Moves queued requests, oldest first, into idle slots while the pool has room (under the
 * lock); cancelled ones end here. */
static void admit(ts_model_engine *e) {
    while (e->queue_len > 0) {
        pending p = e->queue[0];
        bool forked = false;
        int64_t shared = 0;
        int s = p.cancelled ? -1 : place(e, &p, &forked, &shared);
        if (s >= 0 && !has_room(e, s, &p)) {
            if (forked) empty_slot(e, s); /* kept while p waits, the copy would pin blocks others need */
            return;
        }
        if (!p.cancelled && s < 0) return;
        memmove(e->queue, e->queue + 1, (size_t)(e->queue_len - 1) * sizeof *e->queue);
        e->queue_len--;
        if (p.cancelled) drop(e, &p, TS_GEN_CANCELLED);
        else start(e, s, p, shared);
    }
}

/* Sends slot s's request back to the queue front, to be recomputed from its prompt + the
 * tokens it generated (the last one, sampled but not fed, included) with its sampler as it is;
 * the slot's blocks go back to the pool. */
static void preempt(ts_model_engine *e, int s) {
    slot_state *sl = &e->slots[s];
    pending p = sl->req;
    if (sl->phase == SLOT_DECODE) { /* the cache holds the prompt and the fed tokens */
        memcpy(p.prompt, sl->tokens, (size_t)sl->n_tokens * sizeof(int32_t));
        p.prompt[sl->n_tokens] = sl->last;
        p.n_prompt = (size_t)sl->n_tokens + 1;
    }
    p.generated = sl->generated;
    p.sampler = sl->sampler;
    sl->sampler = e->spare[--e->n_spare];
    empty_slot(e, s);
    sl->phase = SLOT_IDLE;
    sl->used_at = ++e->clock;
    memmove(e->queue + 1, e->queue, (size_t)e->queue_len * sizeof *e->queue);
    e->queue[0] = p;
    e->queue_len++;
    e->preemptions++;
}

/* The pool ran short: idle caches go until one frees a block. Those sharing all their blocks
 * with running sequences free none, but a running one may then write into a block of its own
 * without a copy: if any went, the compute is retried first. Else the youngest running request
 * is preempted - or fails, when it runs alone and still does not fit (submit makes that
 * impossible). */
static void reclaim(ts_model_engine *e) {
    e->pool_short = false;
    int64_t before = free_blocks(e);
    bool evicted = false;
    while (evict_idle(e, -1)) {
        evicted = true;
        if (free_blocks(e) > before) return;
    }
    if (evicted) return;
    int youngest = -1, n_running = 0;
    for (int s = 0; s < e->opt.slots; s++) {
        if (!running(&e->slots[s])) continue;
        n_running++;
        if (youngest < 0 || e->slots[s].admitted_at > e->slots[youngest].admitted_at) youngest = s;
    }
    if (n_running > 1) preempt(e, youngest);
    else if (youngest >= 0) fail(e, youngest);
}

/* ---------------------------------------------------------------- the worker */

/* What one iteration computes: the batch's first n_decode sequences are generating ones (one
 * token each), the rest prompt chunks (logits only after a prompt's last token) - or,
 * `speculate`, a speculative round of the one generating slot. */
typedef struct {
    int n, n_decode;
    bool speculate;
} plan;

/* Whether slot s's prompt chunk wants every row of logits (prompt log-probabilities still to report). */
static bool wants_prompt_rows(const slot_state *sl) {
    return sl->req.prompt_logprobs && sl->req.prompt_lp_next < sl->req.n_user_prompt;
}

/* Prompt chunks of the prefilling slots after the one served last, up to the budget; a chunk
 * ends at its slot's checkpoint boundary, and one whose every row of logits is wanted (prompt
 * logprobs) is cut to the rows left in e->logits. */
static void plan_prefill(ts_model_engine *e, plan *p) {
    int64_t budget = e->opt.prefill_chunk, rows = p->n;
    for (int k = 1, last = e->prefill_rr; k <= e->opt.slots && budget > 0; k++) {
        int s = (last + k) % e->opt.slots;
        const slot_state *sl = &e->slots[s];
        if (sl->phase != SLOT_PREFILL) continue;
        int64_t left = (int64_t)sl->req.n_prompt - sl->n_tokens, m = left < budget ? left : budget;
        if (sl->checkpoint_at > sl->n_tokens && sl->n_tokens + m > sl->checkpoint_at) m = sl->checkpoint_at - sl->n_tokens;
        bool all_rows = wants_prompt_rows(sl);
        if (all_rows && m > e->opt.slots - rows) m = e->opt.slots - rows;
        if (m < 1) continue;
        int64_t kept = all_rows ? m : m == left;
        e->batch[p->n++] = (ts_model_decoder_seq){s, sl->req.prompt + sl->n_tokens, m, kept};
        rows += kept;
        budget -= m;
        e->prefill_rr = s;
    }
}

/* Reports the prompt log-probabilities a chunk's rows give: row r (after the token at position
 * p0 + r) predicts the token at p0 + r + 1. */
static void report_prompt_rows(ts_model_engine *e, slot_state *sl, int64_t p0, int64_t n, const float *rows) {
    pending *req = &sl->req;
    for (int64_t r = 0; r < n; r++) {
        int64_t pos = p0 + r + 1;
        if (pos >= req->n_user_prompt || pos < req->prompt_lp_next) continue;
        if (ts_logprobs(rows + r * e->vocab, (int32_t)e->vocab, req->prompt[pos], req->top_logprobs, &e->lp) != TS_OK)
            continue; /* a row without a distribution: nothing to say */
        if (req->sink.prompt_token) req->sink.prompt_token(req->sink.user, pos, &e->lp);
        req->prompt_lp_next = pos + 1;
    }
}

static plan make_plan(ts_model_engine *e) {
    plan p = {0, 0, false};
    for (int s = 0; s < e->opt.slots; s++)
        if (e->slots[s].phase == SLOT_DECODE) e->batch[p.n++] = (ts_model_decoder_seq){s, &e->slots[s].last, 1, 1};
    p.n_decode = p.n;
    plan_prefill(e, &p);
    /* a round drafts (and runs the MTP block) whenever there is room for two more tokens; not for
     * a request that wants logprobs (a round's tokens come without the rows of logits) */
    const slot_state *one = &e->slots[e->batch[0].slot];
    p.speculate = e->spec && p.n == 1 && p.n_decode == 1 && one->n_tokens + 2 <= e->opt.max_len && !one->req.logprobs;
    return p;
}

/* Sequence s reports its next token tok (sampled and recorded by its sampler; lp: its
 * log-probabilities when the request asked), or ends; true while it goes on. */
static bool deliver(ts_model_engine *e, int s, int32_t tok, const ts_token_logprobs *lp) {
    slot_state *sl = &e->slots[s];
    bool stop = tok == e->eos;
    for (int i = 0; i < sl->req.n_stop_ids; i++) stop |= tok == sl->req.stop_ids[i];
    if (stop) {
        finish(e, s, TS_GEN_STOP_TOKEN);
        return false;
    }
    sl->req.sink.token(sl->req.sink.user, tok, lp);
    sl->last = tok;
    sl->phase = SLOT_DECODE;
    if (++sl->generated < sl->req.max_tokens && sl->n_tokens < e->opt.max_len) return true;
    finish(e, s, TS_GEN_LENGTH);
    return false;
}

/* Sequence s samples from its logits row and reports the token, or ends. */
static void emit(ts_model_engine *e, int s, const float *logits) {
    const pending *req = &e->slots[s].req;
    int32_t tok;
    if (ts_sampler_sample(e->slots[s].sampler, logits, &tok, NULL) != TS_OK ||
        (req->logprobs && ts_logprobs(logits, (int32_t)e->vocab, tok, req->top_logprobs, &e->lp) != TS_OK))
        finish(e, s, TS_GEN_ERROR);
    else
        deliver(e, s, tok, req->logprobs ? &e->lp : NULL);
}

/* Whether a compute failed for want of pool blocks (then nothing was appended: a retry after
 * reclaim() can succeed). */
static bool out_of_blocks(ts_model_engine *e, ts_status st) {
    if (st == TS_ERR_OOM && e->pool.shared) e->pool_short = true;
    return st == TS_ERR_OOM && e->pool.shared;
}

/* A speculative round of the plan's slot yielded out[0..n_out): `last` and all but the last
 * of them are in its cache now (the decoder's length says which). */
static void after_round(ts_model_engine *e, ts_status st, const int32_t *out, int n_out) {
    int s = e->batch[0].slot;
    slot_state *sl = &e->slots[s];
    if (out_of_blocks(e, st)) return; /* nothing appended */
    if (st != TS_OK) {
        fail(e, s);
        return;
    }
    sl->tokens[sl->n_tokens++] = sl->last;
    if (n_out == 2) sl->tokens[sl->n_tokens++] = out[0];
    for (int i = 0; i < n_out && deliver(e, s, out[i], NULL); i++) {}
}

/* The batch's tokens are in the caches: each sequence records them, and those with logits
 * sample (rows in batch order). */
static void after_batch(ts_model_engine *e, const plan *p, ts_status st) {
    if (out_of_blocks(e, st)) return;
    const float *row = e->logits;
    for (int i = 0; i < p->n; i++) {
        const ts_model_decoder_seq *q = &e->batch[i];
        if (st != TS_OK) {
            fail(e, q->slot);
            continue;
        }
        slot_state *sl = &e->slots[q->slot];
        int64_t p0 = sl->n_tokens;
        memcpy(sl->tokens + sl->n_tokens, q->ids, (size_t)q->n * sizeof(int32_t));
        sl->n_tokens += q->n;
        if (i >= p->n_decode) e->prefill_tokens += q->n;
        if (i >= p->n_decode && sl->n_tokens == sl->checkpoint_at) take_checkpoint(e, q->slot);
        if (q->logit_rows == 0) continue;
        if (i >= p->n_decode && sl->req.prompt_logprobs && q->logit_rows == q->n) report_prompt_rows(e, sl, p0, q->n, row);
        const float *last = row + (q->logit_rows - 1) * e->vocab;
        row += q->logit_rows * e->vocab;
        if (i < p->n_decode || p0 + q->n == (int64_t)sl->req.n_prompt) emit(e, q->slot, last); /* a prompt's end */
    }
}

/* Speculation: a prompt chunk in pieces the MTP block keeps up with; its logits (if wanted) at
 * *row. */
static ts_status spec_prefill(ts_model_engine *e, const ts_model_decoder_seq *q, float **row) {
    ts_status s = ts_speculator_prefill(e->spec, q->slot, q->ids, q->n, q->logit_rows ? *row : e->spare_logits);
    *row += q->logit_rows * e->vocab;
    return s;
}

/* Speculation: brings the MTP block up to date on the stepping slots that are more than half
 * its lag limit ahead of it (the step adds one more). */
static ts_status catch_up_mtp(ts_model_engine *e, const plan *p) {
    for (int i = 0; i < p->n_decode; i++) {
        slot_state *sl = &e->slots[e->batch[i].slot];
        if (ts_model_decoder_mtp_lag(e->dec, e->batch[i].slot) < TS_MODEL_MTP_MAX_LAG / 2) continue;
        ts_status s = ts_model_decoder_mtp(e->dec, e->batch[i].slot, sl->last, e->spare_logits);
        if (s != TS_OK) return s;
    }
    return TS_OK;
}

/* The plan's batch: one ts_model_decoder_batch; with speculation the prompt chunks first, then
 * the steps (their logits rows after the steps', as in a batch). */
static ts_status run_batch(ts_model_engine *e, const plan *p) {
    if (!e->spec) return ts_model_decoder_batch(e->dec, p->n, e->batch, e->logits);
    float *row = e->logits + (size_t)p->n_decode * (size_t)e->vocab;
    ts_status s = TS_OK;
    for (int i = p->n_decode; s == TS_OK && i < p->n; i++) s = spec_prefill(e, &e->batch[i], &row);
    if (s == TS_OK) s = catch_up_mtp(e, p);
    if (s == TS_OK && p->n_decode > 0) s = ts_model_decoder_batch(e->dec, p->n_decode, e->batch, e->logits);
    return s;
}

static void *worker_main(void *arg) {
    ts_model_engine *e = arg;
    pthread_mutex_lock(&e->mu);
    for (;;) {
        for (int s = 0; s < e->opt.slots; s++)
            if (e->slots[s].phase != SLOT_IDLE && (e->slots[s].req.cancelled || e->stop)) finish(e, s, TS_GEN_CANCELLED);
        if (e->stop) break;
        admit(e);
        free_blocks(e);
        plan p = make_plan(e);
        if (p.n == 0) {
            pthread_cond_wait(&e->wake, &e->mu);
            continue;
        }
        /* submit / cancel / stats stay responsive during the compute; only this thread changes
         * slots, so what the plan names stays valid */
        pthread_mutex_unlock(&e->mu);
        ts_status st;
        int32_t out[2];
        int n_out = 0;
        if (p.speculate) {
            const slot_state *sl = &e->slots[e->batch[0].slot];
            st = ts_speculator_step(e->spec, e->batch[0].slot, sl->sampler, sl->last, out, &n_out);
        } else {
            st = run_batch(e, &p);
        }
        int64_t passes = ts_model_decoder_passes(e->dec);
        pthread_mutex_lock(&e->mu);
        e->passes = passes;
        if (p.speculate) after_round(e, st, out, n_out);
        else after_batch(e, &p, st);
        if (e->pool_short) reclaim(e);
    }
    for (int i = 0; i < e->queue_len; i++) drop(e, &e->queue[i], TS_GEN_CANCELLED);
    e->queue_len = 0;
    pthread_mutex_unlock(&e->mu);
    return NULL;
}

/* ---------------------------------------------------------------- the ts_engine table */

static ts_status eng_tokenize(void *self, const char *text, size_t len, bool add_bos, ts_token_ids *out) {
    ts_model_engine *e = self;
    if (e->tok) {
        ts_io_error ioe;
        unsigned flags = TS_TOKENIZE_PARSE_SPECIAL | (add_bos && ts_tokenizer_bos_id(e->tok) >= 0 ? TS_TOKENIZE_ADD_BOS : 0);
        return ts_tokenizer_encode(e->tok, text, len, flags, out, &ioe);
    }
    size_t need = out->n + len + 1;
    if (need > out->cap) {
        int32_t *ids = realloc(out->ids, need * sizeof *ids);
        if (!ids) return TS_ERR_OOM;
        out->ids = ids;
        out->cap = need;
    }
    if (add_bos) out->ids[out->n++] = TS_BYTE_BOS;
    for (size_t i = 0; i < len; i++) out->ids[out->n++] = (uint8_t)text[i] + TS_BYTE_OFFSET;
    return TS_OK;
}

static ts_status eng_detokenize(void *self, int32_t id, ts_token_bytes *out) {
    ts_model_engine *e = self;
    if (e->tok) {
        ts_io_error ioe;
        return ts_tokenizer_decode(e->tok, &id, 1, TS_TOKENIZE_SKIP_SPECIAL, out, &ioe);
    }
    if (id < TS_BYTE_OFFSET || id >= TS_BYTE_OFFSET + 256) return TS_OK; /* specials: no text */
    if (out->n + 1 > out->cap) {
        size_t cap = out->cap ? 2 * out->cap : 16;
        uint8_t *d = realloc(out->data, cap);
        if (!d) return TS_ERR_OOM;
        out->data = d;
        out->cap = cap;
    }
    out->data[out->n++] = (uint8_t)(id - TS_BYTE_OFFSET);
    return TS_OK;
}

static ts_status eng_submit(void *self, const ts_gen_request *req) {
    ts_model_engine *e = self;
    int64_t need = (int64_t)req->n_prompt + req->max_tokens;
    if (req->n_prompt < 1 || req->max_tokens < 1 || need > e->opt.max_len ||
        blocks_for(e, need) > e->pool.blocks) /* could never run, even alone */
        return TS_ERR_RANGE;
    for (size_t i = 0; i < req->n_prompt; i++)
        if (req->prompt[i] < 0 || req->prompt[i] >= e->vocab) return TS_ERR_RANGE;
    if (ts_sampling_params_check(&req->sampling, NULL) || req->n_stop_ids < 0 || req->n_stop_ids > TS_GEN_MAX_STOP_IDS ||
        req->top_logprobs < 0 || req->top_logprobs > TS_MAX_TOP_LOGPROBS)
        return TS_ERR_RANGE;
    if (req->prompt_logprobs && e->spec) return TS_ERR_UNSUPPORTED; /* its prefill keeps the last row only */
    for (int32_t i = 0; i < req->sampling.n_logit_bias; i++)
        if (req->sampling.logit_bias[i].id >= e->vocab) return TS_ERR_RANGE;
    pending p = {.id = req->id,
                 .prompt = malloc((size_t)need * sizeof(int32_t)), /* room for a preemption's tokens */
                 .n_prompt = req->n_prompt,
                 .max_tokens = req->max_tokens,
                 .sampling = req->sampling,
                 .n_stop_ids = req->n_stop_ids,
                 .logprobs = req->logprobs,
                 .top_logprobs = req->top_logprobs,
                 .prompt_logprobs = req->logprobs && req->prompt_logprobs,
                 .prompt_lp_next = 1,
                 .n_user_prompt = (int64_t)req->n_prompt,
                 .sink = req->sink};
    if (!p.prompt) return TS_ERR_OOM;
    memcpy(p.stop_ids, req->stop_ids, sizeof p.stop_ids);
    memcpy(p.prompt, req->prompt, req->n_prompt * sizeof(int32_t));
    pthread_mutex_lock(&e->mu);
    ts_status s = TS_OK;
    if (e->stop || e->queue_len >= e->opt.max_queue) s = TS_ERR_STATE;
    else e->queue[e->queue_len++] = p;
    pthread_cond_signal(&e->wake);
    pthread_mutex_unlock(&e->mu);
    if (s != TS_OK) free(p.prompt);
    return s;
}

static void eng_cancel(void *self, uint64_t id) {
    ts_model_engine *e = self;
    pthread_mutex_lock(&e->mu);
    for (int i = 0; i < e->queue_len; i++)
        if (e->queue[i].id == id) e->queue[i].cancelled = true;
    for (int s = 0; s < e->opt.slots; s++)
        if (running(&e->slots[s]) && e->slots[s].req.id == id) e->slots[s].req.cancelled = true;
    pthread_cond_signal(&e->wake);
    pthread_mutex_unlock(&e->mu);
}

static void eng_stats(void *self, ts_engine_stats *out) {
    ts_model_engine *e = self;
    *out = (ts_engine_stats){0};
    pthread_mutex_lock(&e->mu);
    for (int s = 0; s < all_slots(e); s++) {
        const slot_state *sl = &e->slots[s];
        if (sl->phase == SLOT_IDLE) {
            out->kv_positions_cached += sl->n_tokens;
            out->prefix_checkpoints += s >= e->opt.slots && sl->n_tokens > 0;
        } else {
            out->running++;
            out->kv_positions_running += sl->n_tokens;
        }
    }
    const ts_model_decoder_pool pool = e->pool;
    out->kv_blocks = pool.blocks;
    out->kv_blocks_free = pool.free_blocks;
    out->kv_positions_capacity = pool.blocks * pool.block_positions;
    out->kv_cache_usage = pool.shared ? (double)(pool.blocks - pool.free_blocks) / (double)pool.blocks
                                      : (double)out->kv_positions_running / (double)out->kv_positions_capacity;
    out->kv_bytes = (int64_t)e->kv_bytes;
    out->preemptions = e->preemptions;
    out->queued = e->queue_len;
    out->prefix_cache_hits = e->prefix_hits;
    out->prefix_reused_tokens = e->reused_tokens;
    out->prefill_tokens = e->prefill_tokens;
    out->forward_passes = e->passes;
    if (e->spec) ts_speculator_stats(e->spec, &out->spec_drafted, &out->spec_accepted);
    pthread_mutex_unlock(&e->mu);
}

void ts_model_engine_table(ts_model_engine *e, ts_engine *out) {
    *out = (ts_engine){e, eng_tokenize, eng_detokenize, eng_submit, eng_cancel, eng_stats};
}

/* ---------------------------------------------------------------- sizing and life cycle */

ts_model_engine_options ts_model_engine_defaults(void) {
    return (ts_model_engine_options){.slots = 4, .max_len = 1024, .max_queue = 64, .prefill_chunk = 64, .prefix_cache = true,
                                     .pool_positions = 0, .checkpoints = -1};
}

/* The checkpoint slots `wanted` (options.checkpoints) makes for `slots` slots over the pool:
 * none unless the pool is shared and its slots rewind only so far. */
static int checkpoint_slots(const ts_model_decoder_pool *pool, int wanted, int slots) {
    if (!pool->shared || pool->rewind < 0 || wanted == 0) return 0;
    return wanted > 0 ? wanted : slots / 2 > 2 ? slots / 2 : 2;
}

/* The pool's shape (its free blocks those of one sequence) and one sequence's memory (a slot's
 * fixed state and the blocks of max_len positions), from a decoder of one slot. */
static ts_status probe(const ts_model_weights *w, ts_backend *be, int64_t max_len, ts_model_decoder_pool *pool,
                       size_t *one, char *err, size_t err_size) {
    ts_model_decoder *d = NULL;
    ts_status s = ts_model_decoder_new(w, be, 1, max_len, &d, err, err_size);
    if (s != TS_OK) return s;
    ts_model_decoder_pool_info(d, pool);
    *one = ts_model_decoder_state_bytes(d);
    ts_model_decoder_free(d);
    return TS_OK;
}

ts_status ts_model_engine_fit(const ts_model_weights *w, ts_backend *be, size_t kv_bytes, int64_t max_len, int max_slots,
                              int checkpoints, int *slots, int64_t *pool_positions, size_t *seq_bytes, char *err,
                              size_t err_size) {
    if (!w || !be || !slots || !pool_positions || max_len < 2 || max_slots < 1 || checkpoints < -1) return TS_ERR_INVALID_ARG;
    ts_model_decoder_pool pool; /* of one slot: its blocks make one sequence */
    size_t one;
    ts_status s = probe(w, be, max_len, &pool, &one, err, err_size);
    if (s != TS_OK) return s;
    size_t block = pool.block_bytes;
    if (seq_bytes) *seq_bytes = one;
    size_t need = one + (size_t)checkpoint_slots(&pool, checkpoints, 1) * pool.slot_bytes;
    if (kv_bytes < need) {
        ts_error_printf(err, err_size, "a KV-cache budget of %.2f MiB holds no sequence of %lld positions (one needs %.2f "
                        "MiB, with its prefix checkpoints' state)", (double)kv_bytes / (1 << 20), (long long)max_len,
                        (double)need / (1 << 20));
        return TS_ERR_RANGE;
    }
    if (!pool.shared) {
        *pool_positions = 0;
        *slots = kv_bytes / one < (size_t)max_slots ? (int)(kv_bytes / one) : max_slots;
        return TS_OK;
    }
    /* the most slots (at most one per block) whose fixed state, with their checkpoints', leaves a
     * sequence's blocks, then every whole block the rest holds, up to all slots at max_len */
    int n = 1;
    while (n < max_slots && (size_t)(n + 1 + checkpoint_slots(&pool, checkpoints, n + 1)) * pool.slot_bytes +
                                    block * (size_t)(n + 1 > pool.blocks ? n + 1 : pool.blocks) <= kv_bytes)
        n++;
    size_t full = (size_t)n * (size_t)pool.blocks, cap = (size_t)(INT32_MAX / pool.block_positions - 1);
    size_t blocks = block ? (kv_bytes - (size_t)(n + checkpoint_slots(&pool, checkpoints, n)) * pool.slot_bytes) / block : full;
    blocks = blocks < full ? blocks : full;
    *pool_positions = (int64_t)(blocks < cap ? blocks : cap) * pool.block_positions;
    *slots = n;
    return TS_OK;
}

static ts_status check_options(const ts_model_engine_options *o, char *err, size_t err_size) {
    if (o->slots >= 1 && o->max_len >= 2 && o->max_queue >= 1 && o->prefill_chunk >= 1 && o->pool_positions >= 0 &&
        o->checkpoints >= -1)
        return TS_OK;
    ts_error_printf(err, err_size, "engine: need slots >= 1, max_len >= 2, max_queue >= 1, prefill_chunk >= 1, "
                    "pool_positions >= 0, checkpoints >= -1 (got %d, %lld, %d, %d, %lld, %d)", o->slots,
                    (long long)o->max_len, o->max_queue, o->prefill_chunk, (long long)o->pool_positions, o->checkpoints);
    return TS_ERR_INVALID_ARG;
}

static ts_status alloc_scratch(ts_model_engine *e) {
    size_t S = (size_t)e->opt.slots, all = (size_t)all_slots(e);
    e->slots = calloc(all, sizeof *e->slots);
    e->queue = calloc((size_t)e->opt.max_queue + S, sizeof *e->queue); /* + the preempted, at most one per slot */
    e->spare = calloc(S, sizeof *e->spare);
    e->batch = calloc(S, sizeof *e->batch);
    e->logits = calloc(S * (size_t)e->vocab, sizeof *e->logits);
    e->spare_logits = calloc((size_t)e->vocab, sizeof *e->spare_logits);
    e->reuse = calloc(all, sizeof *e->reuse);
    if (!e->slots || !e->queue || !e->spare || !e->batch || !e->logits || !e->spare_logits || !e->reuse)
        return TS_ERR_OOM;
    for (size_t i = 0; i < all; i++) { /* checkpoints sample nothing */
        e->slots[i].tokens = malloc((size_t)e->opt.max_len * sizeof(int32_t));
        if (!e->slots[i].tokens || (i < S && (ts_sampler_new(e->vocab, &e->slots[i].sampler) != TS_OK ||
                                              ts_sampler_new(e->vocab, &e->spare[e->n_spare++]) != TS_OK)))
            return TS_ERR_OOM;
    }
    return TS_OK;
}

/* The decoder: the slots, and the checkpoint slots the model needs (the pool then sized for the
 * slots alone when options leave it to the slots: checkpoints share their blocks). */
static ts_status make_decoder(ts_model_engine *e, const ts_model_weights *w, ts_backend *be, char *err, size_t err_size) {
    const ts_model_engine_options *o = &e->opt;
    ts_model_decoder_pool pool;
    size_t one;
    ts_status s = probe(w, be, o->max_len, &pool, &one, err, err_size);
    if (s != TS_OK) return s;
    e->n_checkpoints = checkpoint_slots(&pool, o->prefix_cache ? o->checkpoints : 0, o->slots);
    int64_t positions = o->pool_positions;
    if (positions == 0 && e->n_checkpoints > 0) positions = o->slots * pool.blocks * pool.block_positions;
    if ((s = alloc_scratch(e)) != TS_OK) {
        ts_error_printf(err, err_size, "engine: out of memory");
        return s;
    }
    return ts_model_decoder_new_pooled(w, be, all_slots(e), o->max_len, positions, &e->dec, err, err_size);
}

ts_status ts_model_engine_new(const ts_model_weights *w, ts_tokenizer *tok, ts_backend *be,
                              const ts_model_engine_options *opt, ts_model_engine **out, char *err, size_t err_size) {
    if (!w || !be || !opt || !out) return TS_ERR_INVALID_ARG;
    *out = NULL;
    ts_status s = check_options(opt, err, err_size);
    if (s != TS_OK) return s;
    const ts_v4_config *c = ts_model_weights_config(w);
    if (!tok && c->vocab_size < TS_BYTE_OFFSET + 256) {
        ts_error_printf(err, err_size, "engine: no tokenizer, and the model's vocabulary (%lld) is not byte-level",
                        (long long)c->vocab_size);
        return TS_ERR_INVALID_ARG;
    }
    ts_model_engine *e = calloc(1, sizeof *e);
    if (!e) return TS_ERR_OOM;
    e->tok = tok;
    e->vocab = (int32_t)c->vocab_size;
    e->eos = tok ? ts_tokenizer_eos_id(tok) : TS_BYTE_EOS;
    e->opt = *opt;
    e->prefill_rr = opt->slots - 1; /* slot 0 is the first to prefill */
    s = make_decoder(e, w, be, err, err_size);
    if (s == TS_OK && opt->speculative) s = ts_speculator_new(w, e->dec, &e->spec, err, err_size);
    if (s == TS_OK) {
        e->kv_bytes = ts_model_decoder_state_bytes(e->dec);
        ts_model_decoder_pool_info(e->dec, &e->pool);
        pthread_mutex_init(&e->mu, NULL);
        pthread_cond_init(&e->wake, NULL);
        e->started = pthread_create(&e->worker, NULL, worker_main, e) == 0;
        if (!e->started) {
            ts_error_printf(err, err_size, "engine: cannot start the worker thread");
            s = TS_ERR_INTERNAL;
        }
    }
    if (s != TS_OK) {
        ts_model_engine_free(e);
        return s;
    }
    *out = e;
    return TS_OK;
}

void ts_model_engine_free(ts_model_engine *e) {
    if (!e) return;
    if (e->started) {
        pthread_mutex_lock(&e->mu);
        e->stop = true;
        pthread_cond_signal(&e->wake);
        pthread_mutex_unlock(&e->mu);
        pthread_join(e->worker, NULL);
        pthread_mutex_destroy(&e->mu);
        pthread_cond_destroy(&e->wake);
    }
    for (int i = 0; e->slots && i < all_slots(e); i++) {
        ts_sampler_free(e->slots[i].sampler);
        free(e->slots[i].tokens);
    }
    ts_speculator_free(e->spec);
    for (int i = 0; i < e->n_spare; i++) ts_sampler_free(e->spare[i]);
    free(e->spare);
    ts_model_decoder_free(e->dec);
    free(e->slots);
    free(e->queue);
    free(e->batch);
    free(e->logits);
    free(e->spare_logits);
    free(e->reuse);
    free(e);
}
