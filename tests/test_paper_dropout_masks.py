"""Input dropout masks drawn once per key (train.DropoutMasks) train exactly as the model's own."""

import jax
import numpy as np

from adam_jax.tools.paper import data, models, runner, train


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
