"""Experiments (the paper's evidence): each a CLI command with a CPU preset and a paper-scale preset, writing
``results.json`` (config, seed, environment, every metric), a CSV table and PNG plots, resumable."""
