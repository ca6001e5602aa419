"""Architectures, by name (the `model` config group): a model config in, an nnx.model.Net out.

Each entry checks its own settings when the config is built, so an impossible shape (a 5x5 kernel
on a 2x2 map, a pool that does not divide the map) fails before anything runs, with the fix.
"""

from nnx import model
from nnx.choices import CONV_IMPLS
from nnx.registry import check, is_int, is_number

IMAGE = (28, 28, 1)  # height, width, channels


def mlp(cfg: dict, initializer, activation, output_activation) -> model.Net:
    """The book's fully connected network: [784] + [width] * depth + [10] (chapters 1-5)."""
    depth, width, batch_norm = cfg["depth"], cfg["width"], cfg["batch_norm"]
    check(is_int(depth) and depth >= 0, "model.depth", depth, "the number of hidden layers must be an integer >= 0", "Use e.g. model.depth=2.")
    check(is_int(width) and width >= 1, "model.width", width, "each hidden layer needs an integer >= 1 neurons", "Use e.g. model.width=30.")
    check(isinstance(batch_norm, bool), "model.batch_norm", batch_norm, "must be true or false", "Use model.batch_norm=true or false.")
    return model.mlp((784, *([width] * depth), 10), initializer, activation, output_activation, batch_norm=batch_norm)


def _int_list(key: str, value, what: str, example: str):
    check(isinstance(value, list) and all(is_int(v) and v >= 1 for v in value), key, value,
          f"must be a list of {what}, each an integer >= 1 ([] for none)", f"Use e.g. '{key}={example}' (quoted in a shell).")


def conv(cfg: dict, initializer, activation, output_activation) -> model.Net:
    """Chapter 6's network3 nets: conv-pool layers, fully connected layers, 10 outputs."""
    maps, fc, kernel, pool, rate = cfg["conv_maps"], cfg["fc"], cfg["kernel"], cfg["pool"], cfg["dropout"]
    _int_list("model.conv_maps", maps, "feature maps per conv-pool layer", "[20,40]")
    _int_list("model.fc", fc, "widths of the fully connected layers", "[100]")
    check(is_int(kernel) and kernel >= 1, "model.kernel", kernel, "the kernel's side must be an integer >= 1", "Use e.g. model.kernel=5.")
    check(is_int(pool) and pool >= 1, "model.pool", pool, "the max-pool's side must be an integer >= 1 (1: no pooling)", "Use e.g. model.pool=2.")
    check(is_number(rate) and 0 <= rate < 1, "model.dropout", rate, "the dropout probability must be in [0, 1)", "Use e.g. model.dropout=0.5, or 0 for none.")
    check(isinstance(cfg["zero_output"], bool), "model.zero_output", cfg["zero_output"], "must be true or false", "Use model.zero_output=true (network3).")
    side = IMAGE[0]
    for i, m in enumerate(maps, 1):
        check(kernel <= side, "model.kernel", kernel, f"conv layer {i} would put a {kernel}x{kernel} kernel on a {side}x{side} map",
              f"Use a smaller model.kernel, or fewer conv layers than model.conv_maps={maps}.")
        side -= kernel - 1
        check(side % pool == 0, "model.pool", pool, f"a {pool}x{pool} pool does not divide conv layer {i}'s {side}x{side} map",
              f"Use a model.pool that divides {side} (e.g. model.pool=1), or another model.kernel.")
        side //= pool
    impl = cfg["conv_impl"]
    check(impl in CONV_IMPLS, "model.conv_impl", impl, f"must be one of {', '.join(CONV_IMPLS)}",
          "Use model.conv_impl=auto (im2col on the CPU, XLA's convolution on an accelerator), or im2col or xla to insist.")
    return model.conv_net(maps, fc, initializer, activation, output_activation, kernel=kernel, pool=pool, dropout=rate,
                          zero_output=cfg["zero_output"], image=IMAGE, conv_impl=impl)


MODELS = {"mlp": mlp, "conv": conv}
