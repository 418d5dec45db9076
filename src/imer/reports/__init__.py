"""Reports over finished runs: run records, aggregation over seeds, tables, the report page and its plots.

The top of the library below the CLI: it reads run folders and sweep
directories and imports experiments (for spec overrides) and config, never the reverse.
"""
