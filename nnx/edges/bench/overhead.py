"""What recording and probing cost: a run with MLflow logging against none, and every probe
against chapter 5's gradients only."""

import tempfile
import time

from nnx.edges import tracking
from nnx.edges.bench.cases import config


def tracking_overhead(data, train_size) -> dict:
    """A 30-epoch nnx.fit with MLflow logging each epoch (as nnx-train does) against none, in %.

    The fresh SQLite store is created (and migrated) before the clock starts: a real store
    exists already. Timed: Run.start with params and tags, fit with on_epoch=run.log_metrics, end.
    The time the training thread spends inside those calls ("logging_s": with tracking.Run's writer
    thread, the queueing and the final flush) is reported too: on 2 shared cores the difference of
    two wall times can drown in other processes' noise.
    """
    import jax

    import nnx

    cfg = config(1, 30, 10, train_size, epochs=30)
    spec = nnx.build(cfg)
    data = nnx.load(train_size=train_size) if train_size != len(data.train.x) else data
    logging_s = []

    def off():
        nnx.fit(spec, data, key=jax.random.PRNGKey(0))

    def on(client, experiment_id):
        spent = 0.0

        def timed(call, *args, **kwargs):
            nonlocal spent
            start = time.perf_counter()
            result = call(*args, **kwargs)
            spent += time.perf_counter() - start
            return result

        run = timed(tracking.Run.start, client, experiment_id, name="nnx-bench tracking overhead",
                    params=tracking.flatten(cfg), tags=tracking.environment_tags())
        nnx.fit(spec, data, key=jax.random.PRNGKey(0), on_epoch=lambda step, values: timed(run.log_metrics, step, values))
        timed(run.end, "FINISHED")
        logging_s.append(spent)

    with tempfile.TemporaryDirectory() as folder:
        client, experiment_id = tracking.open_experiment(f"sqlite:///{folder}/mlflow.db", "nnx-bench")
        # Alternate off/on twice and keep each one's best: other load on 2 cores only adds time.
        times = {"off": [], "on": []}
        for _ in range(2):
            for mode, run in (("off", off), ("on", lambda: on(client, experiment_id))):
                start = time.perf_counter()
                run()
                times[mode].append(time.perf_counter() - start)
    t_off, t_on = min(times["off"]), min(times["on"])
    return {"train_size": train_size, "epochs": 30, "off_s": t_off, "on_s": t_on, "pct": (t_on - t_off) / t_off * 100,
            "logging_s": min(logging_s), "logging_pct": min(logging_s) / t_off * 100}


def probes_overhead(train_size) -> dict:
    """A 10-epoch fit of chapter 5's [784,30,30,30,30,10] with every optional probe measured after
    every epoch (activations, histograms, Jacobian spectra of 8 images) against chapter 5's
    gradients only, in %. Each mode is timed twice (compilation included, as a user pays it)
    and its best kept."""
    import jax

    import nnx

    data = nnx.load(train_size=train_size)
    every = ["probes.kinds=[activations,histograms,jacobians]", "probes.every=1", "probes.jacobian_every=1"]
    specs = {"off": nnx.build(config(4, 30, 10, train_size, epochs=10)),
             "on": nnx.build(config(4, 30, 10, train_size, epochs=10, extra=every))}
    times = {"off": [], "on": []}
    for _ in range(2):
        for mode, spec in specs.items():
            start = time.perf_counter()
            nnx.fit(spec, data, key=jax.random.PRNGKey(0))
            times[mode].append(time.perf_counter() - start)
    t_off, t_on = min(times["off"]), min(times["on"])
    return {"train_size": train_size, "epochs": 10, "sizes": [784, 30, 30, 30, 30, 10], "off_s": t_off, "on_s": t_on,
            "pct": (t_on - t_off) / t_off * 100}
