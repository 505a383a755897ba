"""`python -m cli`: the same command as the `model-registry` console script."""

from cli.entry import run

run()
