"""`python -m bench`: run every benchmark case (see bench/run.py)."""

from bench.run import main

main()
