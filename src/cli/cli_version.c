/* cli_version.c - `tessera version`: the version and how this binary was built (compiler,
 * build type, sanitizers), as recorded in the library by the build system (cpu.h). */
#include "cli/cli.h"
#include "tessera/cpu.h"

int cli_version_main(int argc, char **argv) {
    const cli_spec spec = {.command = "version", .summary = "Print the version and how this binary was built."};
    int rc = cli_parse(&spec, argc, argv);
    if (rc != CLI_CONTINUE) return rc;
    ts_build_info b = ts_build_info_get();
    printf("tessera %s\n", b.version);
    printf("compiler:   %s\n", b.compiler);
    printf("build type: %s\n", b.build_type);
    printf("sanitizers: %s\n", b.sanitizers ? "address, undefined" : "none");
    return CLI_EXIT_OK;
}
