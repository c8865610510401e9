/* cli_bench_peers.c - OpenBLAS and oneDNN behind one small interface (cli_bench_peers.h) for
 * `tessera bench gemm`. OpenBLAS: cblas_sgemm, cblas_sgemv for M = 1 (the call its users make
 * there) and cblas_sbgemm for bf16 when the library has it. oneDNN: its matmul primitive on
 * plain row-major memory (B as "ab" or, stored [N, K], "ba"), f32 or bf16 sources with an f32
 * destination, built once per case by prepare; B's data handle is swapped per call. oneDNN's
 * C types come from its header, so that peer exists only when libdnnl-dev was installed at build
 * time (TS_HAVE_DNNL); the library itself is still loaded at run time. */
#include "cli/cli_bench_peers.h"

#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifdef TS_HAVE_DNNL
#include <oneapi/dnnl/dnnl.h>
#endif

typedef enum { PEER_OPENBLAS, PEER_ONEDNN } peer_kind;

enum { CBLAS_ROW_MAJOR = 101, CBLAS_NO_TRANS = 111, CBLAS_TRANS = 112 };

typedef struct {
    void (*sgemm)(int, int, int, int, int, int, float, const float *, int, const float *, int, float, float *, int);
    void (*sgemv)(int, int, int, int, float, const float *, int, const float *, int, float, float *, int);
    void (*sbgemm)(int, int, int, int, int, int, float, const uint16_t *, int, const uint16_t *, int, float, float *,
                   int);
} openblas_fns;

#ifdef TS_HAVE_DNNL
typedef struct {
    dnnl_status_t (*engine_create)(dnnl_engine_t *, dnnl_engine_kind_t, size_t);
    dnnl_status_t (*engine_destroy)(dnnl_engine_t);
    dnnl_status_t (*stream_create)(dnnl_stream_t *, dnnl_engine_t, unsigned);
    dnnl_status_t (*stream_destroy)(dnnl_stream_t);
    dnnl_status_t (*stream_wait)(dnnl_stream_t);
    dnnl_status_t (*md_init_by_tag)(dnnl_memory_desc_t *, int, const dnnl_dims_t, dnnl_data_type_t, dnnl_format_tag_t);
    dnnl_status_t (*matmul_desc_init)(dnnl_matmul_desc_t *, const dnnl_memory_desc_t *, const dnnl_memory_desc_t *,
                                      const dnnl_memory_desc_t *, const dnnl_memory_desc_t *);
    dnnl_status_t (*pd_create)(dnnl_primitive_desc_t *, const_dnnl_op_desc_t, const_dnnl_primitive_attr_t,
                               dnnl_engine_t, const_dnnl_primitive_desc_t);
    dnnl_status_t (*pd_destroy)(dnnl_primitive_desc_t);
    dnnl_status_t (*primitive_create)(dnnl_primitive_t *, const_dnnl_primitive_desc_t);
    dnnl_status_t (*primitive_destroy)(dnnl_primitive_t);
    dnnl_status_t (*execute)(const_dnnl_primitive_t, dnnl_stream_t, int, const dnnl_exec_arg_t *);
    dnnl_status_t (*memory_create)(dnnl_memory_t *, const dnnl_memory_desc_t *, dnnl_engine_t, void *);
    dnnl_status_t (*memory_destroy)(dnnl_memory_t);
    dnnl_status_t (*set_handle)(dnnl_memory_t, void *);
} onednn_fns;

typedef struct {
    dnnl_engine_t engine;
    dnnl_stream_t stream;
    dnnl_primitive_t prim; /* of the prepared case; NULL between cases */
    dnnl_memory_t src, weights, dst;
} onednn_state;
#endif

struct bench_peer {
    peer_kind kind;
    void *lib;
    openblas_fns ob;
#ifdef TS_HAVE_DNNL
    onednn_fns dn;
    onednn_state st;
#endif
};

/* POSIX lets a void * from dlsym become a function pointer; ISO C needs the detour. */
#define LOAD(lib, field, sym) (*(void **)&(field) = dlsym((lib), (sym)))

bench_peer *bench_peer_openblas(int threads, const char **why) {
    void *lib = dlopen("libopenblas.so.0", RTLD_NOW | RTLD_LOCAL);
    if (!lib) {
        *why = "libopenblas.so.0 not found";
        return NULL;
    }
    bench_peer *p = calloc(1, sizeof *p);
    void (*set_threads)(int) = NULL;
    LOAD(lib, set_threads, "openblas_set_num_threads");
    if (!p || !LOAD(lib, p->ob.sgemm, "cblas_sgemm") || !LOAD(lib, p->ob.sgemv, "cblas_sgemv")) {
        *why = p ? "libopenblas.so.0 lacks cblas_sgemm" : "out of memory";
        free(p);
        dlclose(lib);
        return NULL;
    }
    LOAD(lib, p->ob.sbgemm, "cblas_sbgemm");
    if (set_threads) set_threads(threads);
    p->kind = PEER_OPENBLAS;
    p->lib = lib;
    return p;
}

bench_peer *bench_peer_onednn(int threads, const char **why) {
#ifndef TS_HAVE_DNNL
    (void)threads;
    *why = "built without oneDNN's header (install libdnnl-dev and rebuild)";
    return NULL;
#else
    char n[16];
    snprintf(n, sizeof n, "%d", threads);
    setenv("OMP_NUM_THREADS", n, 1); /* read by libgomp when dlopen loads it below */
    void *lib = dlopen("libdnnl.so.2", RTLD_NOW | RTLD_LOCAL);
    if (!lib) {
        *why = "libdnnl.so.2 not found";
        return NULL;
    }
    bench_peer *p = calloc(1, sizeof *p);
    bool ok = p != NULL;
    if (ok) {
        onednn_fns *f = &p->dn;
        ok = LOAD(lib, f->engine_create, "dnnl_engine_create") && LOAD(lib, f->engine_destroy, "dnnl_engine_destroy") &&
             LOAD(lib, f->stream_create, "dnnl_stream_create") && LOAD(lib, f->stream_destroy, "dnnl_stream_destroy") &&
             LOAD(lib, f->stream_wait, "dnnl_stream_wait") && LOAD(lib, f->md_init_by_tag, "dnnl_memory_desc_init_by_tag") &&
             LOAD(lib, f->matmul_desc_init, "dnnl_matmul_desc_init") &&
             LOAD(lib, f->pd_create, "dnnl_primitive_desc_create") &&
             LOAD(lib, f->pd_destroy, "dnnl_primitive_desc_destroy") &&
             LOAD(lib, f->primitive_create, "dnnl_primitive_create") &&
             LOAD(lib, f->primitive_destroy, "dnnl_primitive_destroy") &&
             LOAD(lib, f->execute, "dnnl_primitive_execute") && LOAD(lib, f->memory_create, "dnnl_memory_create") &&
             LOAD(lib, f->memory_destroy, "dnnl_memory_destroy") &&
             LOAD(lib, f->set_handle, "dnnl_memory_set_data_handle");
        ok = ok && f->engine_create(&p->st.engine, dnnl_cpu, 0) == dnnl_success &&
             f->stream_create(&p->st.stream, p->st.engine, dnnl_stream_default_flags) == dnnl_success;
    }
    if (!ok) {
        *why = p ? "libdnnl.so.2 lacks the matmul API or cannot make a CPU engine" : "out of memory";
        free(p);
        dlclose(lib);
        return NULL;
    }
    p->kind = PEER_ONEDNN;
    p->lib = lib;
    return p;
#endif
}

void bench_peer_free(bench_peer *p) {
    if (!p) return;
    bench_peer_release(p);
#ifdef TS_HAVE_DNNL
    if (p->kind == PEER_ONEDNN) {
        p->dn.stream_destroy(p->st.stream);
        p->dn.engine_destroy(p->st.engine);
    }
#endif
    /* oneDNN's OpenMP threads outlive any dlclose; leave the libraries loaded until exit. */
    free(p);
}

const char *bench_peer_name(const bench_peer *p) { return p->kind == PEER_OPENBLAS ? "openblas" : "onednn"; }

const char *bench_peer_routine(const bench_peer *p, ts_dtype dtype) {
    if (p->kind == PEER_OPENBLAS) return dtype == TS_F32 ? "cblas_sgemm" : dtype == TS_BF16 && p->ob.sbgemm ? "cblas_sbgemm" : NULL;
    return dtype == TS_F32 || dtype == TS_BF16 ? "dnnl matmul" : NULL;
}

#ifdef TS_HAVE_DNNL
static bool onednn_prepare(bench_peer *p, const bench_gemm_case *c) {
    const onednn_fns *f = &p->dn;
    onednn_state *st = &p->st;
    dnnl_data_type_t in = c->dtype == TS_BF16 ? dnnl_bf16 : dnnl_f32;
    dnnl_dims_t a_dims = {c->m, c->k}, b_dims = {c->k, c->n}, c_dims = {c->m, c->n};
    dnnl_memory_desc_t a_md, b_md, c_md;
    dnnl_matmul_desc_t desc;
    dnnl_primitive_desc_t pd = NULL;
    bool ok = f->md_init_by_tag(&a_md, 2, a_dims, in, dnnl_ab) == dnnl_success &&
              f->md_init_by_tag(&b_md, 2, b_dims, in, c->b_nk ? dnnl_ba : dnnl_ab) == dnnl_success &&
              f->md_init_by_tag(&c_md, 2, c_dims, dnnl_f32, dnnl_ab) == dnnl_success &&
              f->matmul_desc_init(&desc, &a_md, &b_md, NULL, &c_md) == dnnl_success &&
              f->pd_create(&pd, &desc, NULL, st->engine, NULL) == dnnl_success &&
              f->primitive_create(&st->prim, pd) == dnnl_success &&
              f->memory_create(&st->src, &a_md, st->engine, (void *)c->a) == dnnl_success &&
              f->memory_create(&st->weights, &b_md, st->engine, DNNL_MEMORY_NONE) == dnnl_success &&
              f->memory_create(&st->dst, &c_md, st->engine, c->c) == dnnl_success;
    if (pd) f->pd_destroy(pd);
    if (!ok) bench_peer_release(p);
    return ok;
}

static void onednn_run(bench_peer *p, const void *b) {
    onednn_state *st = &p->st;
    p->dn.set_handle(st->weights, (void *)b);
    dnnl_exec_arg_t args[3] = {{DNNL_ARG_SRC, st->src}, {DNNL_ARG_WEIGHTS, st->weights}, {DNNL_ARG_DST, st->dst}};
    p->dn.execute(st->prim, st->stream, 3, args);
    p->dn.stream_wait(st->stream);
}
#endif

bool bench_peer_prepare(bench_peer *p, const bench_gemm_case *c) {
    if (!bench_peer_routine(p, c->dtype)) return false;
#ifdef TS_HAVE_DNNL
    if (p->kind == PEER_ONEDNN) return onednn_prepare(p, c);
#endif
    return true;
}

void bench_peer_run(bench_peer *p, const bench_gemm_case *c, const void *b) {
#ifdef TS_HAVE_DNNL
    if (p->kind == PEER_ONEDNN) {
        onednn_run(p, b);
        return;
    }
#endif
    const openblas_fns *ob = &p->ob;
    int m = (int)c->m, n = (int)c->n, k = (int)c->k, ldb = c->b_nk ? k : n;
    int tb = c->b_nk ? CBLAS_TRANS : CBLAS_NO_TRANS;
    if (c->dtype == TS_BF16) ob->sbgemm(CBLAS_ROW_MAJOR, CBLAS_NO_TRANS, tb, m, n, k, 1.0f, c->a, k, b, ldb, 0.0f, c->c, n);
    else if (m == 1) /* y = op(B)^T x */
        ob->sgemv(CBLAS_ROW_MAJOR, c->b_nk ? CBLAS_NO_TRANS : CBLAS_TRANS, c->b_nk ? n : k, c->b_nk ? k : n, 1.0f, b,
                  ldb, c->a, 1, 0.0f, c->c, 1);
    else ob->sgemm(CBLAS_ROW_MAJOR, CBLAS_NO_TRANS, tb, m, n, k, 1.0f, c->a, k, b, ldb, 0.0f, c->c, n);
}

void bench_peer_release(bench_peer *p) {
#ifdef TS_HAVE_DNNL
    if (p->kind != PEER_ONEDNN) return;
    onednn_state *st = &p->st;
    if (st->prim) p->dn.primitive_destroy(st->prim);
    if (st->src) p->dn.memory_destroy(st->src);
    if (st->weights) p->dn.memory_destroy(st->weights);
    if (st->dst) p->dn.memory_destroy(st->dst);
    st->prim = NULL;
    st->src = st->weights = st->dst = NULL;
#else
    (void)p;
#endif
}
