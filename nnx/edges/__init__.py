"""The edges of nnx: everything that touches Hydra, MLflow, files, signals or stdout.

The core (nnx.*, outside this package) takes plain values and returns plain values; these
modules turn a command line into those values and what comes back into stored runs:
  paths       where the project's conf/, mlruns/ and reports/ are
  tracking    the only module that talks to MLflow (runs, their dataset input, their logged model)
  classifier  a trained network as an MLflow pyfunc model (what tracking logs; loaded by MLflow)
  cli         nnx-train (Hydra), with preflight (every job of a sweep checked before any runs)
  sweeps      a sweep's shared file and MLflow parent run (the multirun's process and its jobs)
  search      hydra/sweeper=search: optuna's TPE over a config's settings, trials pruned per epoch
              (its Hydra class lives in hydra_plugins/nnx_search/, where Hydra takes plugins from)
  job         one job: its runs' identity, started or found to skip or heal
  lifecycle   the runs from their first epoch to their end; checkpoint (the files a run writes), stop (signals)
  resume      a killed run continued in place; rerun (nnx-rerun)
  bench       nnx-bench
A test over the import graph (tests/test_layering.py) keeps the core from importing any of them.
"""
