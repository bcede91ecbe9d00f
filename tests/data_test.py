"""Tests of jaxmpc.data: loaders, deterministic splits and batching, clear errors for missing data."""

from __future__ import annotations

import gzip
import io
import os
import struct

import numpy as np
import pytest

from jaxmpc import data
from jaxmpc.data import (
    ArraySource,
    DatasetNotFoundError,
    Subset,
    batches,
    epoch_permutation,
    load_dataset,
    stratified_split,
)

PIL = pytest.importorskip("PIL.Image")


def _fmnist_installed() -> bool:
    folder = os.environ.get(data.FASHION_MNIST_ENV) or data.FASHION_MNIST_DEFAULT_DIR
    return os.path.isfile(os.path.join(folder, "train-images-idx3-ubyte.gz"))


# --------------------------------------------------------------------------------------------
# digits


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def test_digits_shapes_dtypes_and_info(digits):
    info = digits.info
    assert info.name == "digits" and info.input_shape == (8, 8, 1) and info.num_classes == 10
    assert info.task == "classification" and info.ignore_index is None
    assert (len(digits.train), len(digits.validation), len(digits.test)) == (1259, 179, 359)
    b = digits.train.get(np.arange(5))
    assert b["image"].shape == (5, 8, 8, 1) and b["image"].dtype == np.float32
    assert b["label"].shape == (5,) and b["label"].dtype == np.int32
    # standardised with the training split's statistics
    x = digits.train.get(np.arange(len(digits.train)))["image"]
    assert abs(float(x.mean())) < 1e-4 and abs(float(x.std()) - 1) < 1e-4


def test_digits_split_is_disjoint_stratified_and_deterministic(digits):
    idx = [s.indices for s in (digits.train, digits.validation, digits.test)]
    assert sum(len(i) for i in idx) == 1797
    assert len(np.unique(np.concatenate(idx))) == 1797
    labels = digits.test.get(np.arange(len(digits.test)))["label"]
    counts = np.bincount(labels, minlength=10)
    assert counts.min() >= 34 and counts.max() <= 37  # 20% of each class (174..183 images)
    again = load_dataset("digits")
    for a, b in zip(idx, (again.train.indices, again.validation.indices, again.test.indices)):
        np.testing.assert_array_equal(a, b)
    other = load_dataset("digits", split_seed=1)
    assert not np.array_equal(other.test.indices, digits.test.indices)
    no_val = data.load_digits(val_fraction=0.0)
    assert no_val.validation is None and len(no_val.train) == 1797 - 359
    with pytest.raises(ValueError, match="no validation split"):
        no_val.split("validation")


# --------------------------------------------------------------------------------------------
# batching


def test_batches_order_is_a_function_of_seed_and_epoch():
    src = ArraySource(np.zeros((10, 2, 2, 1), np.float32), np.arange(10))

    def labels(**kw):
        return [b["label"].tolist() for b in batches(src, 4, **kw)]

    assert labels() == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert labels(drop_remainder=True) == [[0, 1, 2, 3], [4, 5, 6, 7]]
    e0 = labels(shuffle=True, seed=3, epoch=0)
    assert e0 == labels(shuffle=True, seed=3, epoch=0)
    assert sorted(np.concatenate(e0).tolist()) == list(range(10))
    assert e0 != labels(shuffle=True, seed=3, epoch=1)
    assert e0 != labels(shuffle=True, seed=4, epoch=0)
    assert labels(shuffle=True, seed=3, start=1) == e0[1:]
    np.testing.assert_array_equal(np.concatenate(e0), epoch_permutation(10, 3, 0))
    with pytest.raises(ValueError, match="explicit seed"):
        labels(shuffle=True)
    with pytest.raises(ValueError, match="start"):
        labels(start=4)


def test_batches_padding_mask_threads_and_prefetch():
    src = ArraySource(np.arange(5, dtype=np.float32).reshape(5, 1, 1, 1), np.arange(5))
    padded = list(batches(src, 4, pad=True, ignore_label=255))
    assert [b["image"].shape[0] for b in padded] == [4, 4]
    np.testing.assert_array_equal(padded[1]["mask"], [1, 0, 0, 0])
    np.testing.assert_array_equal(padded[1]["label"], [4, 255, 255, 255])
    lazy = data.LazySource(23, lambda i: (np.full((2, 2, 1), i, np.float32), i))
    plain = [b["label"].tolist() for b in batches(lazy, 5, shuffle=True, seed=0)]
    fast = [b["label"].tolist() for b in batches(lazy, 5, shuffle=True, seed=0, num_threads=3, prefetch=2)]
    assert plain == fast
    it = batches(lazy, 5, prefetch=2)  # closing early stops the background thread
    next(it)
    it.close()


def test_lazy_source_errors():
    src = data.LazySource(3, lambda i: (np.zeros((i + 1, 2, 1), np.float32), 0), name="mixed")
    with pytest.raises(ValueError, match="different shapes"):
        src.get(np.arange(3))
    with pytest.raises(IndexError):
        src.get(np.array([3]))
    with pytest.raises(IndexError):
        Subset(src, np.array([5]))


def test_stratified_split_fractions():
    labels = np.repeat(np.arange(4), 50)
    rest, a, b = stratified_split(labels, (0.2, 0.1), seed=0)
    assert (len(rest), len(a), len(b)) == (140, 40, 20)
    assert np.bincount(labels[a]).tolist() == [10] * 4
    with pytest.raises(ValueError):
        stratified_split(labels, (0.8, 0.3), seed=0)


# --------------------------------------------------------------------------------------------
# Fashion-MNIST


@pytest.mark.skipif(
    not _fmnist_installed(),
    reason="Fashion-MNIST files not installed (apt-get install dataset-fashion-mnist, or set JAXMPC_FASHION_MNIST_DIR)",
)
def test_fashion_mnist_reads_the_real_70k_images():
    ds = load_dataset("fashion_mnist")
    assert ds.info.input_shape == (28, 28, 1) and ds.info.num_classes == 10
    assert (len(ds.train), len(ds.validation), len(ds.test)) == (55_000, 5_000, 10_000)
    assert len(ds.train) + len(ds.validation) + len(ds.test) == 70_000
    test = ds.test.get(np.arange(10_000))
    assert test["image"].dtype == np.float32 and test["image"].shape == (10_000, 28, 28, 1)
    assert np.bincount(test["label"]).tolist() == [1000] * 10
    val = ds.validation.get(np.arange(5000))["label"]
    assert np.bincount(val).tolist() == [500] * 10
    train_pixels = ds.train.get(np.arange(0, 55_000, 11))["image"]
    assert abs(float(train_pixels.mean())) < 0.02 and abs(float(train_pixels.std()) - 1) < 0.02
    assert set(ds.train.indices).isdisjoint(ds.validation.indices)


def _write_idx(path, arr):
    arr = np.asarray(arr, np.uint8)
    header = bytes([0, 0, 0x08, arr.ndim]) + struct.pack(">" + "I" * arr.ndim, *arr.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + arr.tobytes())


def test_fashion_mnist_path_override_and_environment(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    _write_idx(tmp_path / "train-images-idx3-ubyte.gz", rng.integers(0, 256, (100, 28, 28)))
    _write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.repeat(np.arange(10), 10))
    _write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", rng.integers(0, 256, (20, 28, 28)))
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.repeat(np.arange(10), 2))
    ds = data.load_fashion_mnist(tmp_path, val_size=20)
    assert (len(ds.train), len(ds.validation), len(ds.test)) == (80, 20, 20)
    monkeypatch.setenv(data.FASHION_MNIST_ENV, str(tmp_path))
    assert len(data.load_fashion_mnist(val_size=0).train) == 100


def test_missing_fashion_mnist_says_how_to_install(tmp_path):
    with pytest.raises(DatasetNotFoundError, match="apt-get install dataset-fashion-mnist") as e:
        data.load_fashion_mnist(tmp_path / "nowhere")
    assert "train-images-idx3-ubyte" in str(e.value)


def test_read_idx_rejects_bad_files(tmp_path):
    bad = tmp_path / "bad.gz"
    with gzip.open(bad, "wb") as f:
        f.write(b"\x01\x02\x03\x04")
    with pytest.raises(ValueError, match="not an idx file"):
        data.read_idx(bad)
    short = tmp_path / "short"
    short.write_bytes(bytes([0, 0, 8, 1]) + struct.pack(">I", 10) + b"\x00" * 3)
    with pytest.raises(ValueError, match="header says"):
        data.read_idx(short)


# --------------------------------------------------------------------------------------------
# tfds (array_record, no TensorFlow)


def test_missing_tfds_dataset_says_how_to_prepare_it(tmp_path):
    with pytest.raises(DatasetNotFoundError) as e:
        load_dataset("cifar100", data_dir=str(tmp_path))
    msg = str(e.value)
    assert "tfds build cifar100 --file_format=array_record" in msg and "train.bin" in msg
    with pytest.raises(DatasetNotFoundError, match="downloads/manual"):
        load_dataset("imagenet", data_dir=str(tmp_path))
    assert not os.listdir(tmp_path)  # nothing was created


def _png(a) -> io.BytesIO:
    buf = io.BytesIO()
    PIL.fromarray(a).save(buf, format="PNG")
    buf.seek(0)
    return buf


def test_cifar100_from_a_prepared_array_record_dataset(tmp_path):
    tfds = pytest.importorskip("tensorflow_datasets")
    rng = np.random.default_rng(0)
    images = {s: rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8) for s, n in (("train", 12), ("test", 5))}

    # Prepare a small dataset under the name "cifar100" with CIFAR-100's features, in the
    # array_record format; images are PNG-encoded with Pillow, so no TensorFlow is needed.
    with tfds.core.registered.skip_registration():

        class Cifar100(tfds.core.GeneratorBasedBuilder):
            VERSION = tfds.core.Version("3.0.2")

            def _info(self):
                features = tfds.features.FeaturesDict(
                    {
                        "id": tfds.features.Text(),
                        "image": tfds.features.Image(shape=(32, 32, 3)),
                        "label": tfds.features.ClassLabel(num_classes=100),
                        "coarse_label": tfds.features.ClassLabel(num_classes=20),
                    }
                )
                return tfds.core.DatasetInfo(builder=self, features=features)

            def _split_generators(self, dl_manager):
                return {s: self._generate_examples(s) for s in images}

            def _generate_examples(self, split):
                for i, img in enumerate(images[split]):
                    label = i if split == "test" else i % 3
                    yield i, {"id": f"{split}_{i}", "image": _png(img), "label": label, "coarse_label": 0}

        Cifar100(data_dir=str(tmp_path), file_format="array_record").download_and_prepare()

    ds = data.load_cifar100(data_dir=str(tmp_path), val_size=3)
    assert ds.info.input_shape == (32, 32, 3) and ds.info.num_classes == 100
    assert (len(ds.train), len(ds.validation), len(ds.test)) == (9, 3, 5)
    assert sorted(ds.validation.get(np.arange(3))["label"].tolist()) == [0, 1, 2]
    test = ds.test.get(np.arange(5))
    for img, label in zip(test["image"], test["label"]):  # the stored order is tfds's own
        np.testing.assert_allclose(img, data.normalize(images["test"][label], data.CIFAR100_MEAN, data.CIFAR100_STD))


def test_cifar100_binary_files(tmp_path):
    rng = np.random.default_rng(1)
    for split, n in (("train", 6), ("test", 3)):
        rec = np.zeros((n, 3074), np.uint8)
        rec[:, 0] = 1
        rec[:, 1] = np.arange(n) + 40
        rec[:, 2:] = rng.integers(0, 256, (n, 3072))
        rec.tofile(tmp_path / f"{split}.bin")
    ds = data.load_cifar100(root=tmp_path)
    assert len(ds.train) == 6 and ds.validation is None
    b = ds.test.get(np.arange(3))
    assert b["label"].tolist() == [40, 41, 42]
    planes = np.fromfile(tmp_path / "test.bin", np.uint8).reshape(3, 3074)[0, 2:].reshape(3, 32, 32)
    np.testing.assert_allclose(
        b["image"][0], data.normalize(planes.transpose(1, 2, 0), data.CIFAR100_MEAN, data.CIFAR100_STD)
    )


# --------------------------------------------------------------------------------------------
# folders


def test_imagenet_folder_resize_crop_and_class_order(tmp_path):
    rng = np.random.default_rng(2)
    for split, n in (("train", 2), ("val", 1)):
        for wnid in ("n02", "n01"):
            d = tmp_path / split / wnid
            d.mkdir(parents=True)
            for i in range(n):
                PIL.fromarray(rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)).save(d / f"{wnid}_{i}.JPEG")
    ds = data.load_imagenet(root=tmp_path, resize=16, crop=12)
    assert ds.info.input_shape == (12, 12, 3) and ds.info.class_names == ("n01", "n02") and ds.info.num_classes == 2
    assert len(ds.train) == 4 and len(ds.test) == 2 and ds.test is ds.validation
    b = ds.train.get(np.arange(4))
    assert b["image"].shape == (4, 12, 12, 3) and b["label"].tolist() == [0, 0, 1, 1]
    with pytest.raises(DatasetNotFoundError, match="<wnid>"):
        data.load_imagenet(root=tmp_path / "missing")


def test_ade20k_folder_labels_and_resize(tmp_path):
    for s in ("training", "validation"):
        (tmp_path / "images" / s).mkdir(parents=True)
        (tmp_path / "annotations" / s).mkdir(parents=True)
        img = np.full((10, 20, 3), 128, np.uint8)
        lab = np.zeros((10, 20), np.uint8)
        lab[:, 10:] = 5  # left half "other" (0), right half class 5
        PIL.fromarray(img).save(tmp_path / "images" / s / "ADE_1.jpg")
        PIL.fromarray(lab).save(tmp_path / "annotations" / s / "ADE_1.png")
    ds = data.load_ade20k(root=tmp_path, size=20, crop=16)
    assert ds.info.task == "segmentation" and ds.info.num_classes == 150 and ds.info.ignore_index == 255
    b = ds.train.get(np.array([0]))
    assert b["image"].shape == (1, 16, 16, 3) and b["label"].shape == (1, 16, 16)
    assert set(np.unique(b["label"]).tolist()) == {4, 255}  # 5 -> 4 (reduce_zero_label), 0 -> ignore
    with pytest.raises(DatasetNotFoundError, match="ADEChallengeData2016"):
        data.load_ade20k()


def test_voc_folder_palette_labels_and_lists(tmp_path):
    for d in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (tmp_path / d).mkdir(parents=True)
    lab = np.zeros((12, 12), np.uint8)
    lab[2:6, 2:6] = 15
    lab[6, :] = 255
    for stem in ("a", "b"):
        PIL.fromarray(np.zeros((12, 12, 3), np.uint8)).save(tmp_path / "JPEGImages" / f"{stem}.jpg")
        pal = PIL.fromarray(lab, mode="P")
        pal.putpalette([0, 0, 0, 128, 0, 0] * 128)
        pal.save(tmp_path / "SegmentationClass" / f"{stem}.png")
    (tmp_path / "ImageSets/Segmentation/train.txt").write_text("a\n")
    (tmp_path / "ImageSets/Segmentation/val.txt").write_text("b\n")
    ds = data.load_voc2012(root=tmp_path, size=12, crop=12)
    assert len(ds.train) == 1 and len(ds.test) == 1 and ds.info.num_classes == 21
    np.testing.assert_array_equal(ds.test.get(np.array([0]))["label"][0], lab)
    (tmp_path / "ImageSets/Segmentation/val.txt").write_text("b\nc\n")
    with pytest.raises(DatasetNotFoundError, match="missing"):
        data.load_voc2012(root=tmp_path)
    with pytest.raises(DatasetNotFoundError, match="VOCdevkit"):
        data.load_voc2012()


def test_transforms():
    img = np.arange(6 * 10 * 3, dtype=np.uint8).reshape(6, 10, 3)
    assert data.resize_short_side(img, 3).shape == (3, 5, 3)
    assert data.resize_short_side(img[..., 0], 12, nearest=True).shape == (12, 20)
    np.testing.assert_array_equal(data.center_crop(img, 4), img[1:5, 3:7])
    assert data.center_crop(img[..., 0], (8, 4), fill=255)[0].tolist() == [255] * 4
    x = data.normalize(np.full((1, 1, 3), 255, np.uint8), (0.5, 0.5, 0.5), (0.5, 0.25, 1.0))
    np.testing.assert_allclose(x[0, 0], [1.0, 2.0, 0.5])


def test_unknown_dataset_name():
    with pytest.raises(ValueError, match="available"):
        load_dataset("mnist")
