/* cli_ops.c - `tessera ops [--backend NAME]`: which ops each backend supports, per dtype, as the
 * conformance suite sees it (ts_conformance_print_support builds every case graph and asks the
 * backend's supports_op; nothing is computed). */
#include "cli/cli.h"
#include "tessera/backend.h"
#include "tessera/conformance.h"

static int print_backend_ops(const ts_backend_entry *e) {
    ts_backend *be = NULL;
    ts_status s = e->create(1, &be);
    if (s != TS_OK) {
        fprintf(stderr, "tessera ops: could not create backend %s: %s\n", e->name, ts_status_name(s));
        return CLI_EXIT_FAILURE;
    }
    ts_conformance_print_support(be, stdout);
    ts_backend_free(be);
    return CLI_EXIT_OK;
}

int cli_ops_main(int argc, char **argv) {
    const char *backend = NULL;
    const cli_option options[] = {
        {"--backend", CLI_OPT_STRING, &backend, "NAME", "only this backend (see 'tessera info'); default: all", 0, 0},
    };
    const cli_spec spec = {
        .command = "ops",
        .summary = "List, per backend, the ops it supports and for which dtypes: 'yes' when every\n"
                   "conformance case of the op is supported, 'part' for some, '-' for none.",
        .options = options,
        .n_options = 1,
    };
    int rc = cli_parse(&spec, argc, argv);
    if (rc != CLI_CONTINUE) return rc;
    if (backend) {
        const ts_backend_entry *e = ts_backend_registry_find(backend);
        if (!e) return cli_usage_error("ops", "no backend named '%s'", backend);
        return print_backend_ops(e);
    }
    int worst = CLI_EXIT_OK;
    for (int i = 0; i < ts_backend_registry_count(); i++) {
        if (i > 0) putchar('\n');
        int r = print_backend_ops(ts_backend_registry_get(i));
        if (r != CLI_EXIT_OK) worst = r;
    }
    return worst;
}
