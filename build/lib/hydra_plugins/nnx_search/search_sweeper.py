"""hydra/sweeper=search: the Hydra side of nnx.edges.search (Hydra takes sweepers only from the
hydra_plugins package; the search itself lives with the rest of nnx's edges)."""

from hydra.core.plugins import Plugins
from hydra.plugins.sweeper import Sweeper

from nnx.edges import search


class SearchSweeper(Sweeper):
    """Hydra's Sweeper API: setup() gets the config and builds the launcher, sweep() runs the search."""

    def __init__(self, **settings):
        self.settings = settings  # conf/hydra/sweeper/search.yaml, as overridden
        self.config = self.launcher = self.hydra_context = None
        self.job_idx = 0  # Hydra's job number of the next trial

    def setup(self, *, hydra_context, task_function, config):
        self.config, self.hydra_context = config, hydra_context
        self.launcher = Plugins.instance().instantiate_launcher(hydra_context=hydra_context, task_function=task_function, config=config)

    def sweep(self, arguments):
        return search.sweep(self, arguments)
