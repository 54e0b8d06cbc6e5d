"""Benchmarks (issue 7): UNet per step, VAE decoder, end-to-end, quality and export tables.

Each module is a script (``python -m benchmarks.<name> [--quick]``) that writes ``<out>/benchmarks/<name>.json``,
``<name>.md`` and PNG plots; ``python -m benchmarks.run_all`` runs them all and assembles ``<out>/benchmarks.md``.
Benchmarks import from ``pipelines`` (``decoder_layouts`` also parses layouts with ``training.decoder``;
``export_sizes`` checks that ``export`` imports); nothing imports from here.
"""
