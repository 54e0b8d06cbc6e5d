"""Benchmarks (issue 7): UNet per step, VAE decoder, end-to-end, quality and export tables.

Each module is a script (``python -m benchmarks.<name> [--quick]``) that writes ``<out>/benchmarks/<name>.json``,
``<name>.md`` and PNG plots; ``python -m benchmarks.run_all`` runs them all and assembles ``<out>/benchmarks.md``.
Benchmarks import from ``pipelines`` (and ``snapfusion_app`` / ``export`` to load what those produce); nothing
imports from here.
"""
