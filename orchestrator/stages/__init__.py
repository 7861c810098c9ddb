"""The stages a user runs: one module per command (preprocess, tune, retrain, ensemble, audit,
promote, reproduce, run, eda). Each module's entry function returns its result; the CLI
(orchestrator/cli.py) is a thin wrapper over them.
"""
