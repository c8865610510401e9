/* cli_info.c - `tessera info`: what this machine offers Tessera. The CPU and its SIMD features
 * come from run-time detection (cpu.h), the same facts optimized kernels dispatch on; the gemm
 * line names the GEMM kernel tier chosen from them; the backends are those in the registry that
 * can be created here; the build line says how the binary was compiled. Output is "key: value"
 * lines so scripts and tests can grep it. */
#include "backends/cpu/gemm.h"
#include "cli/cli.h"
#include "cli/cli_model_info.h"
#include "tessera/backend.h"
#include "tessera/cpu.h"

static void print_cpu(void) {
    const ts_cpu_features *f = ts_cpu_features_get();
    char simd[512];
    printf("cpu:        %s (%s)\n", f->model_name, f->arch);
    printf("cores:      %d logical\n", f->logical_cores);
    printf("simd:       %s\n", ts_cpu_features_format(f, simd, sizeof simd));
}

/* The GEMM kernel tier chosen at start-up from those features (or lowered by TESSERA_CPU_TIER). */
static void print_gemm_tier(void) {
    printf("gemm:       %s kernels (best here: %s; TESSERA_CPU_TIER=<tier> forces a lower one)\n",
           ts_gemm_tier_name(), ts_gemm_tier_to_name(ts_gemm_tier_best()));
}

/* One line per registered backend; creating it is the honest test of "available". */
static void print_backends(void) {
    for (int i = 0; i < ts_backend_registry_count(); i++) {
        const ts_backend_entry *e = ts_backend_registry_get(i);
        ts_backend *be = NULL;
        ts_status s = e->create(0, &be);
        if (s != TS_OK) {
            printf("backend:    %s - unavailable (%s)\n", e->name, ts_status_name(s));
            continue;
        }
        ts_backend_info info;
        ts_backend_get_info(be, &info);
        printf("backend:    %s - %s; %s\n", info.name, e->description, info.device);
        ts_backend_free(be);
    }
}

static void print_build(void) {
    ts_build_info b = ts_build_info_get();
    printf("build:      tessera %s, %s, %s, sanitizers %s\n", b.version, b.compiler, b.build_type,
           b.sanitizers ? "address+undefined" : "off");
}

int cli_info_main(int argc, char **argv) {
    const char *model = NULL;
    uint64_t context = 0, batch = 1, seq = 0;
    const cli_option options[] = {
        {"--model", CLI_OPT_STRING, &model, "CONFIG.json|PRESET",
         "describe a model instead of the machine: parameters, FLOPs, KV cache, training memory\n"
         "(presets: tiny, small, flash, pro, dense-tiny, dense-small)", 0, 0},
        {"--context", CLI_OPT_U64, &context, "N", "context length for FLOPs and KV-cache figures (0: model default)", 0, 1e12},
        {"--batch", CLI_OPT_U64, &batch, "N", "batch size for the training-memory estimate", 1, 1e9},
        {"--seq", CLI_OPT_U64, &seq, "N", "sequence length for the training-memory estimate (0: model default)", 0, 1e12},
    };
    const cli_spec spec = {
        .command = "info",
        .summary = "Describe this machine: CPU model, logical cores, SIMD features detected at run time,\n"
                   "the backends available here, and the options this binary was built with.\n"
                   "With --model, describe a model configuration instead.",
        .options = options,
        .n_options = (int)(sizeof options / sizeof options[0]),
    };
    int rc = cli_parse(&spec, argc, argv);
    if (rc != CLI_CONTINUE) return rc;
    if (model) return ts_cli_print_model_info(model, (int64_t)context, (int64_t)batch, (int64_t)seq, stdout, stderr);
    print_cpu();
    print_gemm_tier();
    print_backends();
    print_build();
    return CLI_EXIT_OK;
}
