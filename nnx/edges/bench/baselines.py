"""What nnx is measured against (nnx-bench): one epoch of the book's SGD, written three other ways.

Every baseline runs chapter 1's network.py exactly: sigmoid layers (output included), the
quadratic cost C_x = ||y - a||^2 / 2, no L2, a fresh shuffle per epoch, then for each mini-batch
    w <- w - (eta / m) sum_x dC_x/dw,    b <- b - (eta / m) sum_x dC_x/db.
Each takes params as [(w [n_out, n_in], b [n_out]), ...] numpy arrays, the training set as
x [N, 784] float32 and y [N] integer labels, and returns the updated params in the same form.
Like network.py, a last mini-batch smaller than m is kept (the book's sizes divide evenly).

Chapter 6's conv nets have one baseline, torch_conv: network3.py's algorithm in PyTorch eager (the
numpy baselines are fully connected only; nnx-bench leaves them out of the conv cases).
"""

import contextlib

import numpy as np


def sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def sigmoid_prime(z):
    return sigmoid(z) * (1 - sigmoid(z))


def _mini_batches(n, mini_batch_size, rng):
    """network.SGD: shuffle, then cut into consecutive mini-batches (as index arrays)."""
    order = np.random.default_rng(rng).permutation(n)
    return [order[k : k + mini_batch_size] for k in range(0, n, mini_batch_size)]


# exp(-z) overflows to inf for z << 0, and 1 / inf = 0 is right: silence the warning once per epoch.
@np.errstate(over="ignore")
def numpy_book(params, x, y, mini_batch_size, eta, *, rng=0):
    """network.py ported to Python 3: per-example backprop over column vectors, float64.

    The data take network.py's form first (load_data_wrapper: x as a [784, 1] column, y as a
    one-hot [10, 1] column), then SGD / update_mini_batch / backprop run as in the book, so this
    is what a reader of the book would run.
    """
    weights = [np.array(w, np.float64) for w, _ in params]  # np.random.randn's dtype
    biases = [np.array(b, np.float64).reshape(-1, 1) for _, b in params]
    sizes = [weights[0].shape[1]] + [w.shape[0] for w in weights]
    # as loaded by the book (float32 images), made once with array views so it costs ~1% of the epoch
    training_data = list(zip(x.reshape(len(x), -1, 1), np.eye(10)[y].reshape(len(y), 10, 1)))

    def backprop(x, y):
        nabla_b = [np.zeros(b.shape) for b in biases]
        nabla_w = [np.zeros(w.shape) for w in weights]
        activation = x
        activations = [x]  # list to store all the activations, layer by layer
        zs = []  # list to store all the z vectors, layer by layer
        for b, w in zip(biases, weights):
            z = np.dot(w, activation) + b
            zs.append(z)
            activation = sigmoid(z)
            activations.append(activation)
        delta = (activations[-1] - y) * sigmoid_prime(zs[-1])  # cost_derivative * sigma'(z)
        nabla_b[-1] = delta
        nabla_w[-1] = np.dot(delta, activations[-2].transpose())
        for l in range(2, len(sizes)):
            sp = sigmoid_prime(zs[-l])
            delta = np.dot(weights[-l + 1].transpose(), delta) * sp
            nabla_b[-l] = delta
            nabla_w[-l] = np.dot(delta, activations[-l - 1].transpose())
        return nabla_b, nabla_w

    for batch in _mini_batches(len(training_data), mini_batch_size, rng):  # update_mini_batch
        mini_batch = [training_data[i] for i in batch]
        nabla_b = [np.zeros(b.shape) for b in biases]
        nabla_w = [np.zeros(w.shape) for w in weights]
        for xi, yi in mini_batch:
            delta_nabla_b, delta_nabla_w = backprop(xi, yi)
            nabla_b = [nb + dnb for nb, dnb in zip(nabla_b, delta_nabla_b)]
            nabla_w = [nw + dnw for nw, dnw in zip(nabla_w, delta_nabla_w)]
        weights = [w - (eta / len(mini_batch)) * nw for w, nw in zip(weights, nabla_w)]
        biases = [b - (eta / len(mini_batch)) * nb for b, nb in zip(biases, nabla_b)]
    return [(w, b.ravel()) for w, b in zip(weights, biases)]


@np.errstate(over="ignore")
def numpy_vectorized(params, x, y, mini_batch_size, eta, *, rng=0):
    """network.py's update_mini_batch with the mini-batch as one matrix (rows = examples), float32.

    The book's four equations (chapter 2) with a row per example: the sums over x in
    update_mini_batch become matrix products, and sigma'(z) = a (1 - a) reuses the activations.
    """
    weights = [np.array(w, np.float32) for w, _ in params]
    biases = [np.array(b, np.float32) for _, b in params]
    targets = np.eye(10, dtype=np.float32)[y]
    for batch in _mini_batches(len(x), mini_batch_size, rng):
        activations = [x[batch]]
        for w, b in zip(weights, biases):
            activations.append(sigmoid(activations[-1] @ w.T + b))
        a = activations[-1]
        delta = (a - targets[batch]) * a * (1 - a)  # BP1, [m, n_out]
        step = eta / len(batch)
        for l in range(1, len(weights) + 1):
            nabla_w, nabla_b = delta.T @ activations[-l - 1], delta.sum(axis=0)  # BP4, BP3
            if l < len(weights):  # BP2 needs w^{l+1} before its update
                a = activations[-l - 1]
                delta = (delta @ weights[-l]) * a * (1 - a)
            weights[-l] -= step * nabla_w
            biases[-l] -= step * nabla_b
    return list(zip(weights, biases))


def _import_torch():
    try:
        import torch  # imported here: it is an optional extra (pip install nnx[bench])
    except ImportError as err:
        raise ImportError("the torch baseline needs PyTorch: pip install torch==2.13.0 (make bench does this)") from err
    return torch


@contextlib.contextmanager
def subnormals_flushed(torch):
    """PyTorch's CPU arithmetic with subnormal floats flushed to zero, as XLA's CPU backend computes.
    A conv net trained with network3's settings makes subnormals: 6.conv2's PyTorch epoch took 160 s
    with them against 11.4 s without. The setting is the process's, so it is put back after (hypothesis,
    for one, refuses to run where subnormals are flushed)."""
    torch.set_flush_denormal(True)
    try:
        yield
    finally:
        torch.set_flush_denormal(False)


def torch_eager(params, x, y, mini_batch_size, eta, *, rng=0):
    """The same epoch in PyTorch eager mode on the CPU (float32): autograd and torch.optim.SGD.

    torch.optim.SGD's step is w <- w - eta grad w, and grad is of the mini-batch's mean cost,
    which is network.py's (eta / m) sum_x grad C_x.
    """
    torch = _import_torch()
    layers = [(torch.tensor(w, dtype=torch.float32, requires_grad=True), torch.tensor(b, dtype=torch.float32, requires_grad=True))
              for w, b in params]
    optimizer = torch.optim.SGD([p for layer in layers for p in layer], lr=eta)
    x = torch.from_numpy(np.asarray(x, np.float32))
    targets = torch.nn.functional.one_hot(torch.from_numpy(np.asarray(y, np.int64)), 10).float()
    with subnormals_flushed(torch):
        for batch in _mini_batches(len(x), mini_batch_size, rng):
            batch = torch.from_numpy(batch)
            a = x[batch]
            for w, b in layers:
                a = torch.sigmoid(a @ w.T + b)
            cost = 0.5 * ((a - targets[batch]) ** 2).sum(dim=1).mean()
            optimizer.zero_grad()
            cost.backward()
            optimizer.step()
    return [(w.detach().numpy(), b.detach().numpy()) for w, b in layers]


TORCH_ACTIVATIONS = ("relu", "sigmoid", "tanh")  # torch.<name>: the hidden layers' sigma in torch_conv


def network3_dropout(a, p, generator):
    """network3's dropout_layer in training: each unit of `a` is zeroed with probability p and the
    kept ones are NOT scaled by 1 / (1 - p) (network3 scales the next layer's input by 1 - p at test
    time instead). The mask is drawn from `generator` (a torch.Generator)."""
    torch = _import_torch()
    return a * (torch.rand(a.shape, generator=generator, dtype=a.dtype) >= p)


def torch_conv(params, x, y, mini_batch_size, eta, *, lmbda=0.0, dropout=0.0, n=None, activation="relu", pool=2, rng=0):
    """One epoch of chapter 6's conv net (network3.py) in PyTorch eager mode on the CPU (float32).

    The net is read off nnx's params (nnx.model.conv_net: one dict per layer, {} for flatten and
    dropout, which are skipped). A 4-D w [maps, channels, k, k] is a conv-pool layer, a 2-D
    w [n_out, n_in] a dense layer, the last one the softmax output:
        conv-pool:  a <- sigma(maxpool_{pool x pool}(conv2d(a, w)) + b)   (valid, stride 1; the bias after the pool)
        dense:      a <- sigma(a w^T + b)                                  (flattened in (channels, h, w) order)
        cost:       C = -(1/m) sum_x ln softmax(z)_y                       (torch's cross_entropy: log-softmax, NLL mean)
    Mini-batches are cut in file order, as network3 trains (no shuffle; a remainder smaller than m is
    dropped, as nnx's epoch drops it), and each step is nnx's (network2's) L2 rule
        w <- w - eta (grad_w C + (lmbda / n) w),    b <- b - eta grad_b C,
    taken by torch.optim.SGD with weight_decay = lmbda / n on the weights' parameter group and 0 on
    the biases' (its step is p <- p - lr (grad + weight_decay p)).

    Args:
      params: nnx's conv net params, [{"w": [maps, channels, k, k], "b": [maps]}, ..., {}, ...,
        {"w": [n_out, n_in], "b": [n_out]}, ...] as numpy arrays.
      x: [N, channels * side^2] float32 images as rows (MNIST: [N, 784]); y: [N] integer labels.
      dropout: network3's rate p on the input of every dense layer (network3_dropout: no rescaling).
      n: the training-set size in lmbda / n (default N); nnx-bench times a prefix of the training
        set with n the whole set's size, so each step is the one nnx takes.
      activation: the hidden layers' sigma, one of TORCH_ACTIVATIONS ("relu": 6.conv2 with ReLU).
      pool: the max-pool's side (nnx's model.pool; network3's poolsize (2, 2)).
      rng: seeds the torch.Generator that draws the dropout masks.
    Returns:
      The updated params in the layout of `params` (numpy float32 arrays; {} where params had {}).
    """
    torch = _import_torch()
    if activation not in TORCH_ACTIVATIONS:
        raise ValueError(f"torch_conv: activation={activation!r} is not one of {TORCH_ACTIVATIONS}; "
                         f"pass e.g. activation='relu'.")
    layers = [{k: torch.tensor(np.asarray(v), dtype=torch.float32, requires_grad=True) for k, v in p.items()} for p in params]
    weighted = [p for p in layers if p]
    if not weighted or any(set(p) != {"w", "b"} for p in weighted):
        raise ValueError(f"torch_conv: every non-empty layer must hold exactly w and b, got {[sorted(p) for p in layers]}.")
    sigma, F = getattr(torch, activation), torch.nn.functional
    optimizer = torch.optim.SGD([{"params": [p["w"] for p in weighted], "weight_decay": lmbda / (n or len(x))},
                                 {"params": [p["b"] for p in weighted], "weight_decay": 0.0}], lr=eta)
    channels = weighted[0]["w"].shape[1] if weighted[0]["w"].dim() == 4 else 1
    side = round((x.shape[1] / channels) ** 0.5)
    images = torch.from_numpy(np.asarray(x, np.float32)).reshape(len(x), channels, side, side)
    labels = torch.from_numpy(np.asarray(y, np.int64))
    generator = torch.Generator().manual_seed(rng)
    m = mini_batch_size
    with subnormals_flushed(torch):
        for k in range(0, len(x) - m + 1, m):
            a = images[k : k + m]
            for i, p in enumerate(weighted):
                if p["w"].dim() == 4:
                    z = F.max_pool2d(F.conv2d(a, p["w"]), pool) + p["b"][:, None, None]
                else:
                    a = a.flatten(1)
                    if dropout:
                        a = network3_dropout(a, dropout, generator)
                    z = F.linear(a, p["w"], p["b"])
                a = z if i == len(weighted) - 1 else sigma(z)
            cost = F.cross_entropy(a, labels[k : k + m])
            optimizer.zero_grad()
            cost.backward()
            optimizer.step()
    return [{k: v.detach().numpy() for k, v in p.items()} for p in layers]


BASELINES = {"numpy_book": numpy_book, "numpy_vectorized": numpy_vectorized, "torch": torch_eager}
