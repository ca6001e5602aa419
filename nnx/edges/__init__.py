"""The edges of nnx: everything that touches Hydra, MLflow, files, signals or stdout.

The core (nnx.*, outside this package) takes plain values and returns plain values; these
modules turn a command line into those values and what comes back into stored runs:
  paths       where the project's conf/, mlruns/ and reports/ are
  tracking    the tracker, the package through which runs are written and read back (store, env, reading,
              parents, writer, model); ui serves MLflow's UI over the store and prints links to the runs
  classifier  a trained network as an MLflow pyfunc model (what tracking logs; loaded by MLflow)
  cli         nnx-train (Hydra), with preflight (every job of a sweep checked before any runs)
  sweeps      a sweep's shared file and MLflow parent run (the multirun's process and its jobs)
  search      hydra/sweeper=search: optuna's TPE over a config's settings, trials pruned per epoch
              (its Hydra class lives in hydra_plugins/nnx_search/, where Hydra takes plugins from);
              search_space its space and settings, read and checked (what preflight needs)
  job         one job: its runs' identity, started or found to skip or heal
  lifecycle   the runs from their first epoch to their end; checkpoint (the files a run writes), stop (signals)
  resume      a killed run continued in place; rerun (nnx-rerun)
  bench       nnx-bench
  compat      the one module that reaches past another library's public API (tests/test_compat.py pins it)
A test over the import graph (tests/test_layering.py) keeps the core from importing any of them, every
module off other modules' private names, and nnx free of import cycles.
"""
