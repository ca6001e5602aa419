"""JAX's devices for nnx's commands: on a machine of two or more cores, two CPU devices, so each
epoch's evaluation runs on the second beside the next epoch (nnx.choices.evaluation_device)."""

import os

DETERMINISTIC = "--xla_gpu_deterministic_ops=true"


def use_two_cpu_devices():
    """Two JAX CPU devices instead of one, where this process may use two cores or more.

    The training of a [784,30,10] net keeps one core busy (a mini-batch of 10 is too small to share),
    and evaluating 70,000 images after each epoch added a third to the epoch; on the second device it
    overlaps the next epoch. Both devices share XLA's one pool of two threads, so the evaluation still
    slows the epoch beside it: ch1_30's epoch in `fit` went from 149 to 138 ms (the whole command,
    alternated four times: 7.45 to 7.19 s). Each device runs the same programs on the same CPU, so the
    numbers are the same bits. JAX takes the setting only before its first computation: called later,
    it changes nothing and evaluation stays in line.
    """
    import jax

    # On a GPU each JAX process would take 75% of its memory at start, so the second of two jobs
    # (nnx-reproduce's, a joblib sweep's) could not start: memory is taken as it is needed instead.
    # A user's own setting wins. Read when the GPU backend starts, so set before any computation.
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    # The same config and seed give the same numbers on a GPU too: XLA's GPU backend may otherwise
    # sum with atomics (scatter-adds, some reductions) in an order that varies from run to run. A GPU
    # flag, known to the CPU build too, where it changes nothing; a user's own setting of it wins.
    flags = os.environ.get("XLA_FLAGS", "")
    if "xla_gpu_deterministic_ops" not in flags:
        os.environ["XLA_FLAGS"] = f"{flags} {DETERMINISTIC}".strip()
    if len(os.sched_getaffinity(0)) < 2:
        return
    try:
        jax.config.update("jax_num_cpu_devices", 2)
    except RuntimeError:  # a computation ran already in this process (JAX's backends are up)
        pass
