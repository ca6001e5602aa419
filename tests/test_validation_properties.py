"""Random configs thrown at the validator: each is rejected with a message, or it trains a step."""

import jax
import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import nnx
from conftest import tiny_cfg

DATA = nnx.load(train_size=64)
ANYTHING = st.one_of(st.integers(-3, 200), st.floats(-2, 5), st.just(float("nan")), st.just(float("inf")),
                     st.just("abc"), st.none(), st.booleans(), st.just("nope"), st.just([1, 1]))
VALID = {
    "depth": st.integers(0, 3),
    "width": st.integers(1, 12),
    "eta": st.floats(1e-3, 3.0),
    "lmbda": st.floats(0, 5.0),
    "mini_batch_size": st.integers(1, 64),
    "train_size": st.integers(64, 50_000),
    "epochs": st.integers(1, 40),
    "activation": st.sampled_from(sorted(nnx.ACTIVATIONS)),
    "init": st.sampled_from(sorted(nnx.INITIALIZERS)),
    "cost": st.sampled_from(sorted(nnx.COSTS)),
    "output": st.sampled_from(sorted(nnx.OUTPUT_ACTIVATIONS)),
    "optimizer": st.sampled_from(sorted(nnx.OPTIMIZERS)),
    "seeds": st.one_of(st.none(), st.lists(st.integers(0, 9), min_size=1, max_size=3, unique=True)),
    "negative_slope": st.floats(0, 0.5),
    "gain": st.floats(0.1, 2.0),
}


@st.composite
def configs(draw):
    """Valid values everywhere, then (three times in four) one field replaced by anything at all."""
    values = {name: draw(strategy) for name, strategy in VALID.items()}
    broken = draw(st.sampled_from([None] * 4 + sorted(VALID) * 3))
    if broken:
        values[broken] = draw(ANYTHING)
    return values


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(configs())
def test_a_config_is_rejected_clearly_or_trains(v):
    cfg = tiny_cfg(
        model={"depth": v["depth"], "width": v["width"], "output_activation": v["output"]}, activation={"name": v["activation"], **({"negative_slope": v["negative_slope"]} if v["activation"] == "leaky_relu" else {})},
        init={"name": v["init"], **({"gain": v["gain"]} if v["init"] == "orthogonal" else {})}, cost={"name": v["cost"]}, optimizer={"name": v["optimizer"], "eta": v["eta"], "lmbda": v["lmbda"]},
        data={"train_size": v["train_size"]}, train={"epochs": v["epochs"], "mini_batch_size": v["mini_batch_size"]}, seeds=v["seeds"],
    )
    try:
        spec = nnx.build(cfg)
    except nnx.ConfigError as err:
        message = str(err)
        assert "=" in message or "unknown" in message or "needs" in message, message
        return
    # Accepted: it trains one epoch on a 64-image slice, without an error from inside JAX.
    data = DATA._replace(train=nnx.Split(DATA.train.x[:64], DATA.train.y[:64]))
    spec = spec.__class__(**{**spec.__dict__, "epochs": 1, "mini_batch_size": min(spec.mini_batch_size, 64)})
    if spec.seeds:
        _, histories = nnx.fit_many(spec, data, seeds=spec.seeds)
    else:
        histories = [nnx.fit(spec, data, key=jax.random.PRNGKey(spec.seed))[1]]
    for history in histories:
        assert history["val_accuracy"].shape == (1,)
        assert np.isfinite(history["train_cost"][0]) or "diverged_at" in history
