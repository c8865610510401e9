/* cpu.h - what the host CPU can do, detected at run time, and how this binary was built.
 *
 * One Tessera binary must run well on any x86-64 or aarch64 machine, so optimized kernels do
 * not rely on compile-time flags: they ask ts_cpu_features_get() which instruction sets this
 * CPU and operating system actually support (x86-64: cpuid + xgetbv; aarch64: the kernel's
 * hwcaps) and pick their tier from that. `tessera info` prints the same facts. */
#ifndef TESSERA_CPU_H
#define TESSERA_CPU_H

#include <stdbool.h>
#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct {
    char arch[16];        /* "x86_64", "aarch64" or "unknown" */
    char model_name[128]; /* e.g. "AMD EPYC 7B13"; "unknown" when the system does not say */
    int logical_cores;    /* online logical processors */

    /* x86-64. A vector extension counts only when the OS also saves its registers (XCR0), so
     * a true flag means the instructions can be used, not merely that the silicon has them. */
    bool sse4_2, avx, avx2, fma, f16c;
    bool avx512f, avx512bw, avx512vl, avx512dq, avx512_vnni, avx512_bf16;
    bool amx_tile, amx_int8, amx_bf16; /* Linux also wants arch_prctl(ARCH_REQ_XCOMP_PERM) before use */

    /* aarch64, from getauxval(AT_HWCAP / AT_HWCAP2). */
    bool asimd, asimddp, sve, bf16, i8mm;
} ts_cpu_features;

/* Fills *out by querying the CPU now (cheap, but reads /proc/cpuinfo for the model name). */
void ts_cpu_features_detect(ts_cpu_features *out);
/* Detected once (thread-safe) and cached: what kernels consult when they choose a tier. */
const ts_cpu_features *ts_cpu_features_get(void);
/* Space-separated names of the features present, in a fixed order ("sse4.2 avx avx2 fma f16c"),
 * or "none". Writes at most size bytes (always NUL-terminated when size > 0); returns buf. */
const char *ts_cpu_features_format(const ts_cpu_features *f, char *buf, size_t size);

/* How the library was compiled (filled in by the build system). */
typedef struct {
    const char *version;    /* TS_VERSION_STRING */
    const char *compiler;   /* e.g. "GNU 12.2.0" */
    const char *build_type; /* CMAKE_BUILD_TYPE: "Release", "RelWithDebInfo", ... */
    bool sanitizers;        /* built with AddressSanitizer + UndefinedBehaviorSanitizer */
} ts_build_info;

ts_build_info ts_build_info_get(void);

#ifdef __cplusplus
}
#endif
#endif
