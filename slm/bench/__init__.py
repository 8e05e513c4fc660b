"""bench.py's sections: the harness they run on (harness.py) and one module per group of sections."""
