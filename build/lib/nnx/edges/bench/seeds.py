"""Several seeds as one vmapped program (nnx.fit_many) against the same seeds one after another."""

import time

from nnx.edges.bench.cases import config

SEEDS = list(range(8))


def multi_seed() -> dict:
    """nnx.fit_many over 8 seeds (one vmapped program) against 8 fit calls in a row."""
    import jax

    import nnx

    spec = nnx.build(config(1, 30, 10, 1000, epochs=30))
    data = nnx.load(train_size=1000)
    start = time.perf_counter()
    jax.block_until_ready(nnx.fit_many(spec, data, seeds=SEEDS))
    vmapped = time.perf_counter() - start
    start = time.perf_counter()
    for seed in SEEDS:
        jax.block_until_ready(nnx.fit(spec, data, key=jax.random.PRNGKey(seed)))
    sequential = time.perf_counter() - start
    return {"seeds": len(SEEDS), "vmapped_s": vmapped, "sequential_s": sequential,
            "train_size": 1000, "epochs": 30, "mini_batch_size": 10}
