"""Dropout masks: models.dropout_mask's unrolled threefry gives jax.random.bernoulli's bits, and
masks drawn once per key (train.DropoutMasks) train exactly as the model's own."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from adam_jax.tools.paper import data, models, runner, train


@pytest.mark.parametrize("rate", [0.5, 0.2, 0.9])
@pytest.mark.parametrize("shape", [(128, 300), (7, 3, 5), (4, 2, 8, 8)])
def test_dropout_mask_is_jax_bernoulli_bit_for_bit(rate, shape):
    keys = jax.random.split(jax.random.PRNGKey(11), 6)
    expected = np.stack([np.asarray(jax.random.bernoulli(k, 1.0 - rate, shape)) for k in keys])
    drawn = jax.jit(jax.vmap(lambda k: models.dropout_mask(k, rate, shape)))(keys)
    np.testing.assert_array_equal(np.asarray(drawn), expected)
    one = jax.jit(models.dropout_mask, static_argnums=(1, 2))(keys[0], rate, shape)
    np.testing.assert_array_equal(np.asarray(one), expected[0])
    assert abs(expected.mean() - (1.0 - rate)) < 0.1
    typed = jax.random.wrap_key_data(keys[0])  # a typed key takes jax.random's own path
    np.testing.assert_array_equal(
        np.asarray(models.dropout_mask(typed, rate, shape)),
        np.asarray(jax.random.bernoulli(typed, 1.0 - rate, shape)),
    )
    assert jnp.asarray(keys[0]).dtype == jnp.uint32


def _train(model, ds, masks_dir=None):
    return train.train_runs_with_steps(
        model, ds.x, ds.y, runner.make_optimizer("adam", True), {"lr": np.array([0.03, 0.3])},
        3, seed=5, step_epochs=1, steps_per_epoch=5, masks_dir=masks_dir,
    )  # fmt: skip


def test_drawn_masks_train_bit_for_bit_as_the_models_own_dropout(tmp_path):
    # 400 documents: 3 minibatches a pass, so the 5-iteration epochs span passes
    ds = data.zipf_corpus(num_docs=400, vocab=300, seed=1)
    model = models.logistic_regression(300, 2, input_dropout=0.5)
    own = _train(model, ds)
    drawn = _train(model, ds, tmp_path)  # draws the masks and keeps them
    read = _train(model, ds, tmp_path)  # reads them back
    files = sorted(tmp_path.glob("*.npy"))
    assert len(files) == 3  # one file per epoch's minibatches, shared by both calls
    for got in (drawn, read):
        np.testing.assert_array_equal(got[0], own[0])
        np.testing.assert_array_equal(got[1], own[1])
    assert np.all(np.isfinite(own[0])) and np.all(own[0][:, -1] != own[0][:, 0])  # it trains


def test_kept_masks_are_jax_bernoulli_of_each_key(tmp_path):
    keys = np.asarray(jax.random.split(jax.random.PRNGKey(3), 4))
    masks = train.DropoutMasks(tmp_path, 0.5, (128, 21))
    packed = masks.chunk(keys)
    assert packed.shape == (4, 128, 3) and packed.dtype == np.uint8
    unpacked = np.unpackbits(packed, axis=-1, count=21).astype(bool)
    for k, mask in zip(keys, unpacked, strict=True):
        np.testing.assert_array_equal(mask, np.asarray(jax.random.bernoulli(k, 0.5, (128, 21))))
    assert 0.4 < unpacked.mean() < 0.6
    np.testing.assert_array_equal(masks.chunk(keys), packed)  # read back from the file


def test_models_with_other_randomness_draw_their_own(tmp_path):
    ds = data.zipf_corpus(num_docs=400, vocab=300, seed=1)
    for model in (models.logistic_regression(300, 2), models.mlp(300, 2, hidden=8)):
        assert model.input_dropout == 0.0
        _train(model, ds, tmp_path)
    assert not list(tmp_path.iterdir())
