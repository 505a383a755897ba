"""`python -m cli`: the same command as the `model-registry` console script."""

from cli.main import main

main(prog_name="model-registry")
