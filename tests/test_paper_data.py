"""Loaders of the real data formats (files written here, in each format) and the embedded data."""

import gzip
import struct

import numpy as np
import pytest

from adam_jax.tools.paper import data, runner, train
from adam_jax.tools.paper.runner import zca_whiten


def write_idx(path, array, gz=False):
    header = struct.pack(">BBBB", 0, 0, 8, array.ndim) + struct.pack(
        f">{array.ndim}I", *array.shape
    )
    payload = header + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(payload) if gz else payload)


@pytest.mark.parametrize("gz", [False, True])
def test_mnist_idx_round_trip(tmp_path, gz):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(5, 4, 3), dtype=np.uint8)
    labels = np.array([3, 1, 4, 1, 5], np.uint8)
    suffix = ".gz" if gz else ""
    write_idx(tmp_path / f"train-images-idx3-ubyte{suffix}", images, gz)
    write_idx(tmp_path / f"train-labels-idx1-ubyte{suffix}", labels, gz)
    ds = data.load("mnist", tmp_path)
    assert ds.x.shape == (5, 12)
    np.testing.assert_allclose(ds.x[2], images[2].ravel() / 255.0, rtol=1e-6)
    np.testing.assert_array_equal(ds.y, [3, 1, 4, 1, 5])
    assert "MNIST (5 images)" in ds.source


def test_mnist_missing_file_names_it(tmp_path):
    write_idx(tmp_path / "train-images-idx3-ubyte", np.zeros((2, 2, 2)))
    with pytest.raises(
        data.DataError, match=r"train-labels-idx1-ubyte.*expected the MNIST training labels \(IDX\)"
    ):
        data.load_mnist(tmp_path)


def test_idx_bad_magic_and_truncation(tmp_path):
    bad = tmp_path / "train-images-idx3-ubyte"
    bad.write_bytes(b"\x12\x34\x56\x78" + b"\0" * 20)
    with pytest.raises(data.DataError, match=r"train-images-idx3-ubyte: bad magic number.*IDX"):
        data.read_idx(bad)
    write_idx(bad, np.zeros((3, 2, 2)))
    bad.write_bytes(bad.read_bytes()[:-1])
    with pytest.raises(
        data.DataError, match=r"announces \(3, 2, 2\) = 12 bytes of data but the file has 11"
    ):
        data.read_idx(bad)
    mismatched = tmp_path / "m"
    mismatched.mkdir()
    write_idx(mismatched / "train-images-idx3-ubyte", np.zeros((3, 2, 2)))
    write_idx(mismatched / "train-labels-idx1-ubyte", np.zeros(2))
    with pytest.raises(data.DataError, match="do not match"):
        data.load_mnist(mismatched)
    write_idx(mismatched / "train-labels-idx1-ubyte", np.array([1, 12, 3]))
    with pytest.raises(data.DataError, match=r"label 12 at index 1; expected digit labels 0..9"):
        data.load_mnist(mismatched)
    notgz = tmp_path / "x.gz"
    notgz.write_bytes(b"not gzip")
    with pytest.raises(data.DataError, match=r"x.gz: not a valid gzip file"):
        data.read_idx(notgz)


def test_cifar_binary_batches(tmp_path):
    rng = np.random.default_rng(1)
    batches = []
    for i in (1, 2):
        labels = rng.integers(0, 10, size=3, dtype=np.uint8)
        pixels = rng.integers(0, 256, size=(3, 3, 32, 32), dtype=np.uint8)
        records = np.concatenate([labels[:, None], pixels.reshape(3, -1)], axis=1)
        (tmp_path / f"data_batch_{i}.bin").write_bytes(records.tobytes())
        batches.append((labels, pixels))
    ds = data.load("cifar10", tmp_path)
    assert ds.x.shape == (6, 3, 32, 32)
    np.testing.assert_array_equal(ds.y, np.concatenate([b[0] for b in batches]))
    # record 4 is the second image of batch 2; its green plane is bytes 1025..2048 of the record
    np.testing.assert_allclose(ds.x[4, 1], batches[1][1][1, 1] / 255.0, rtol=1e-6)


def test_cifar_errors(tmp_path):
    with pytest.raises(
        data.DataError, match=r"data_batch_1.bin: expected the CIFAR-10 binary version"
    ):
        data.load_cifar10(tmp_path)
    (tmp_path / "data_batch_1.bin").write_bytes(b"\0" * 100)
    with pytest.raises(
        data.DataError, match=r"data_batch_1.bin: 100 bytes is not a multiple of 3073"
    ):
        data.load_cifar10(tmp_path)
    (tmp_path / "data_batch_1.bin").write_bytes(bytes([11]) + b"\0" * 3072)
    with pytest.raises(data.DataError, match="label byte 11 > 9"):
        data.load_cifar10(tmp_path)


def test_imdb_svmlight(tmp_path):
    d = tmp_path / "aclImdb" / "train"
    d.mkdir(parents=True)
    (d / "labeledBow.feat").write_text("9 0:3 5:1 12000:7\n2 1:2 9999:300\n7 0:1\n\n")
    ds = data.load("imdb", tmp_path)
    assert ds.x.shape == (3, data.VOCAB)
    np.testing.assert_array_equal(ds.y, [1, 0, 1])  # rating >= 7 is positive
    assert ds.x[0, 0] == 3 and ds.x[0, 5] == 1 and ds.x[0].sum() == 4  # index 12000 dropped
    assert ds.x[1, 9999] == 255  # counts clipped to uint8
    (d / "labeledBow.feat").write_text("9 0:3\n8 zero:1\n")
    with pytest.raises(data.DataError, match=r"labeledBow.feat, line 2: '8 zero:1' is not valid"):
        data.load_imdb(tmp_path)


@pytest.mark.parametrize(
    "line", ["7 0:inf", "7 0:-3", "7 0:nan", "7 -1:2", "7 0:1.5", "7 0:1e999", "x 0:1", "7 0"]
)
def test_imdb_malformed_line_names_file_line_and_format(tmp_path, line):
    d = tmp_path / "aclImdb" / "train"
    d.mkdir(parents=True)
    (d / "labeledBow.feat").write_text(f"9 0:3\n\n{line}\n")
    with pytest.raises(data.DataError) as info:
        data.load_imdb(tmp_path)
    message = str(info.value)
    assert f"labeledBow.feat, line 3: {line!r} is not valid" in message
    assert "non-negative integer indices and non-negative integer counts" in message


def test_reproduce_exits_2_on_a_malformed_file_before_training(tmp_path, capsys, monkeypatch):
    from adam_jax.tools import cli
    from adam_jax.tools.paper import train

    monkeypatch.setattr(train, "train_runs_with_steps", None)  # any training would fail loudly
    write_idx(tmp_path / "train-images-idx3-ubyte", np.zeros((130, 2, 2)))
    write_idx(tmp_path / "train-labels-idx1-ubyte", np.zeros(130))
    d = tmp_path / "aclImdb" / "train"
    d.mkdir(parents=True)
    (d / "labeledBow.feat").write_text("9 0:3\n2 4:inf\n")
    out = tmp_path / "out"
    args = ["reproduce", "fig1", "--tiny", "--no-progress", "--out", str(out)]
    assert cli.main([*args, "--data-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err
    assert "labeledBow.feat, line 2: '2 4:inf' is not valid" in err


def test_imdb_missing_and_bad_data_dir(tmp_path):
    with pytest.raises(
        data.DataError, match=r"aclImdb/train/labeledBow.feat: expected the IMDB bag-of-words"
    ):
        data.load("imdb", tmp_path)
    with pytest.raises(data.DataError, match="is not a directory"):
        data.load("mnist", tmp_path / "nope")
    with pytest.raises(ValueError, match="unknown dataset 'svhn'"):
        data.load("svhn")


def test_embedded_digits():
    mnist, cifar = data.load("mnist"), data.load("cifar10")
    assert mnist.x.shape == (1797, 64) and cifar.x.shape == (1797, 1, 8, 8)
    assert mnist.x.min() == 0.0 and mnist.x.max() == 1.0
    assert sorted(set(mnist.y.tolist())) == list(range(10))
    np.testing.assert_array_equal(cifar.x.reshape(1797, 64), mnist.x)
    assert "standing in for MNIST" in mnist.source


def test_zipf_corpus_is_sparse_zipfian_and_seeded():
    ds = data.zipf_corpus(num_docs=300, seed=3)
    assert ds.x.shape == (300, 10_000) and ds.x.dtype == np.uint8
    assert (ds.x > 0).mean() < 0.03  # very sparse, as bag-of-words
    counts = ds.x.sum(0).astype(float)
    # Zipf: the most frequent word appears about 10x as often as the 10th (sentiment words aside)
    assert 5 < counts[0] / counts[9] < 20
    assert 0.3 < ds.y.mean() < 0.7
    # 20% of the labels flipped: the words' sentiment agrees with the label for about 80%
    polar = data.zipf_corpus(num_docs=300, seed=3, label_noise=0.0)
    np.testing.assert_array_equal(ds.x, polar.x)
    assert 0.1 < (ds.y != polar.y).mean() < 0.3
    np.testing.assert_array_equal(ds.x, data.zipf_corpus(num_docs=300, seed=3).x)
    assert not np.array_equal(ds.x, data.zipf_corpus(num_docs=300, seed=4).x)


def test_quick_corpus_keeps_its_cost_near_the_label_noise_entropy():
    """The calibration (results/calibration/): with 20% of labels flipped, no weights predict new
    documents better than the noise's entropy H(0.2) = 0.500 nats. The quick run's corpus (4,000
    documents over 1,000 words) cannot be memorised far below it, even with 4x the quick run's
    epochs; the earlier shape (2,000 documents over 10,000 words) is separable and goes to ~0."""
    h = -(0.2 * np.log(0.2) + 0.8 * np.log(0.8))
    quick = runner.QUICK

    def final_cost(docs, vocab, epochs):
        ds = data.zipf_corpus(num_docs=docs, vocab=vocab)
        model = runner.build_model("fig1_imdb", ds, quick)
        lrs = np.array([0.03, 0.1, 0.3])
        costs, _ = train.train_runs_with_steps(
            model, ds.x, ds.y, runner.make_optimizer("adam", False), {"lr": lrs}, epochs, 0
        )
        return float(np.nanmin(costs[:, -1]))

    assert (quick.imdb_docs, quick.imdb_vocab) == (4000, 1000)
    assert final_cost(4000, 1000, 4 * quick.epochs["fig1_imdb"]) > 0.8 * h
    assert final_cost(2000, 10_000, quick.epochs["fig1_imdb"]) < 0.2 * h


def test_full_corpus_flips_the_calibrated_share_of_labels():
    """The full run's Fig. 1 right corpus is the one the calibration in results/calibration/ chose: the same
    25,000 documents over 10,000 words, with 5% of the labels flipped (a binomial share: within
    4 standard deviations of 5% of 25,000), and it says so in its source."""
    full = runner.FULL
    ds = runner.load_data(["fig1"], full, None)["imdb"]
    clean = data.zipf_corpus(num_docs=25_000, vocab=10_000, label_noise=0.0)
    np.testing.assert_array_equal(ds.x, clean.x)
    flipped = float(np.mean(ds.y != clean.y))
    assert abs(flipped - 0.05) < 4 * np.sqrt(0.05 * 0.95 / 25_000)
    assert "25,000 documents, 10,000 words, 5% of labels flipped" in ds.source
    assert runner.QUICK.imdb_label_noise == 0.2  # the quick corpus is unchanged


def test_zca_whitening_gives_identity_covariance():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(500, 8)) @ rng.normal(size=(8, 8))  # correlated, full rank
    x = x.reshape(500, 2, 2, 2)
    w = zca_whiten(x.astype(np.float32), eps=0.0).reshape(500, -1).astype(np.float64)
    np.testing.assert_allclose(np.cov(w.T, bias=True), np.eye(8), atol=1e-3)


def test_reproduce_all_reads_the_three_real_formats(tmp_path, monkeypatch):
    """``reproduce all --data-dir`` on small files in the exact formats (MNIST IDX, gzipped;
    CIFAR-10 binary batches; IMDB svmlight) reaches every figure; training is faked (the
    loaders and the pipeline around them are what is tested)."""
    from adam_jax.tools import cli

    rng = np.random.default_rng(0)
    d = tmp_path / "data"
    (d / "aclImdb" / "train").mkdir(parents=True)
    write_idx(d / "train-images-idx3-ubyte.gz", rng.integers(0, 256, (256, 28, 28)), gz=True)
    write_idx(d / "train-labels-idx1-ubyte.gz", rng.integers(0, 10, 256), gz=True)
    records = np.concatenate(
        [rng.integers(0, 10, (256, 1)), rng.integers(0, 256, (256, 3072))], axis=1
    ).astype(np.uint8)
    (d / "data_batch_1.bin").write_bytes(records.tobytes())
    lines = [
        f"{rng.choice([1, 2, 3, 4, 7, 8, 9, 10])} "
        + " ".join(
            f"{j}:{rng.integers(1, 5)}" for j in sorted(rng.choice(10_000, 20, replace=False))
        )
        for _ in range(256)
    ]
    (d / "aclImdb" / "train" / "labeledBow.feat").write_text("\n".join(lines) + "\n")
    shapes = []

    def fake(model, x, y, make_tx, hparams, epochs, seed, on_epoch=None, **kw):
        shapes.append(x.shape[1:])
        runs = len(next(iter(hparams.values())))
        losses = np.linspace(2.0, 1.0, epochs + 1)[None].repeat(runs, 0) * (1 + 0.01 * seed)
        steps = kw.get("steps_per_epoch") or len(y) // 128
        return losses, np.ones((runs, kw.get("step_epochs", 0) * steps))

    monkeypatch.setattr(train, "train_runs_with_steps", fake)
    monkeypatch.setattr(runner, "zca_whiten", lambda x: x)  # 3072 dims: a minute; tested above
    out = tmp_path / "out"
    args = ["reproduce", "all", "--tiny", "--jobs", "1", "--no-progress", "--out", str(out)]
    assert cli.main([*args, "--data-dir", str(d)]) == 0
    assert {(784,), (10_000,), (3, 32, 32)} <= set(shapes)
    summary = (out / "summary.md").read_text()
    for source in ("MNIST (256 images)", "IMDB (256 reviews)", "CIFAR-10 (256 images)"):
        assert source in summary
