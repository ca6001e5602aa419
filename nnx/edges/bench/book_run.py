"""The book's chapter 1 run as a reader runs it, as one process (the whole-command bench):

    import mnist_loader, network
    training_data, validation_data, test_data = mnist_loader.load_data_wrapper()
    net = network.Network([784, 30, 10])
    net.SGD(training_data, 30, 10, 3.0, test_data=test_data)

    python nnx/edges/bench/book_run.py <the book's mnist.pkl.gz> <epochs>

Run as a file, not a module of nnx, and only numpy is imported (importing nnx would import JAX):
the epoch is baselines.numpy_book (network.py's SGD, update_mini_batch and backprop, loaded from
its file), the evaluation network.py's, one image at a time.
"""

import gzip
import importlib.util
import itertools
import pickle
import sys
from pathlib import Path

import numpy as np

_spec = importlib.util.spec_from_file_location("baselines", Path(__file__).with_name("baselines.py"))
baselines = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(baselines)
numpy_book, sigmoid = baselines.numpy_book, baselines.sigmoid


def load_data_wrapper(path):
    """mnist_loader.load_data_wrapper: the training set is what numpy_book takes; the test set as
    network.py evaluates it, a [784, 1] column and the label per image."""
    with gzip.open(path, "rb") as f:
        train, _, test = pickle.load(f, encoding="latin1")
    return (train[0], train[1]), [(x.reshape(784, 1), y) for x, y in zip(*test)]


def evaluate(params, test_data) -> int:
    """network.evaluate: sum(int(argmax(feedforward(x)) == y)), feedforward one column at a time."""
    correct = 0
    for x, y in test_data:
        a = x
        for w, b in params:
            a = sigmoid(np.dot(w, a) + b.reshape(-1, 1))
        correct += int(np.argmax(a) == y)
    return correct


def main(argv=None):
    path, epochs = (argv or sys.argv[1:])[:2]
    (x, y), test_data = load_data_wrapper(path)
    rng = np.random.default_rng(0)
    sizes = [784, 30, 10]  # network.Network: biases and weights from N(0, 1)
    params = [(rng.standard_normal((n_out, n_in)), rng.standard_normal(n_out)) for n_in, n_out in itertools.pairwise(sizes)]
    for j in range(int(epochs)):
        params = numpy_book(params, x, y, 10, 3.0, rng=j)
        print(f"Epoch {j}: {evaluate(params, test_data)} / {len(test_data)}", flush=True)


if __name__ == "__main__":
    main()
