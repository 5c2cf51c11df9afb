"""The work count of ``python -m adam_jax.tools.paper.cost`` against the matrix products of an MLP
counted by hand."""

import numpy as np

from adam_jax.tools.paper import cost, data, models


def test_flop_count_is_the_matrix_products_of_forward_and_backward():
    d, h, k, batch = 64, 256, 10, 128
    rng = np.random.default_rng(0)
    ds = data.Dataset(
        "toy", rng.normal(size=(200, d)).astype(np.float32), rng.integers(0, k, 200), k, "toy"
    )
    mlp = models.mlp(d, k, hidden=h, input_dropout=0.0, hidden_dropout=0.0)
    # forward: x@w0, h@w1, h@w2; backward: the three weight gradients and the gradients of the
    # two hidden activations (the input's is not needed); 2 flops per multiply-add
    forward = batch * (d * h + h * h + h * k)
    backward = batch * (d * h + h * h + h * k) + batch * (h * h + h * k)
    by_hand = 2 * (forward + backward) / 1e9
    counted = cost.gflop_per_iteration(mlp, ds)
    # the elementwise work (biases, ReLU, softmax) adds a few percent at this size
    assert by_hand <= counted <= 1.05 * by_hand, (counted, by_hand)
