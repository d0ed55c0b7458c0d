"""The retrieval-quality evaluation (issue 11; not part of the shipped
package): a golden set committed in `evaluation/golden/`, asked of a real
`memoryd serve` process, scored per family and search mode. Run it from the
repository root with `python -m evaluation` or `make eval`; the table and
what it shows are in docs/quality.md.

`golden` generates and reads the set, `metrics` scores rankings and prints
the table, `run` drives the server, `__main__` is the CLI.
"""
