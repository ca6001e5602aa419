"""nnx's search sweeper, where Hydra looks for plugins (the hydra_plugins namespace package)."""
