"""What the stage scripts share, one concept per module (docs/architecture.md draws how they import each other).

The scripts at the root are the commands (prepare.py, train.py, sample.py, bench.py, serve.py, ablate.py,
export.py); model.py (the networks) and configurator.py (config files and --key=value) sit beside them. Nothing
here imports a script.
"""
