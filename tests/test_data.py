import pickle

import numpy as np
import pytest
import torch
from helpers import write_tiny_mnist
from torchvision import datasets

from vaelab.data.base import binarize, draw_binary
from vaelab.data.dsprites import DSpritesDataModule
from vaelab.data.torchvision_sets import CIFAR10DataModule, FashionMNISTDataModule, MNISTDataModule
from vaelab.errors import DatasetNotFoundError


def test_mnist_reads_idx_files_and_splits(tiny_mnist):
    root, arrays = tiny_mnist
    data = MNISTDataModule(root=str(root), download=False, val_size=10, binarize="none", seed=1)
    data.setup()
    train, val, test = (data.datasets[s] for s in ("train", "val", "test"))
    assert (len(train), len(val), len(test)) == (30, 10, 20)
    assert train.images.shape == (30, 1, 28, 28) and train.images.dtype == torch.uint8
    # test images are the t10k file, in order; train + val together are the train file
    assert np.array_equal(test.images[:, 0].numpy(), arrays["t10k-images-idx3-ubyte"])
    assert np.array_equal(test.labels.numpy(), arrays["t10k-labels-idx1-ubyte"])
    joined = torch.cat([train.images, val.images])[:, 0].flatten(1)
    expected = torch.from_numpy(arrays["train-images-idx3-ubyte"].astype(np.uint8)).flatten(1)
    assert sorted(map(tuple, joined.tolist())) == sorted(map(tuple, expected.tolist()))


def test_mnist_binarisation_modes(tiny_mnist):
    root, _ = tiny_mnist
    data = MNISTDataModule(root=str(root), download=False, val_size=10, binarize="dynamic")
    data.setup()
    train, val = data.datasets["train"].images, data.datasets["val"].images
    assert len(train.unique()) > 2  # grey levels stay in memory: a new draw every batch
    assert set(val.unique().tolist()) == {0, 255}  # val and test are binarised once
    again = MNISTDataModule(root=str(root), download=False, val_size=10, binarize="dynamic")
    again.setup()
    assert torch.equal(val, again.datasets["val"].images)
    static = MNISTDataModule(root=str(root), download=False, val_size=10, binarize="static")
    static.setup()
    assert set(static.datasets["train"].images.unique().tolist()) == {0, 255}
    assert data.binary and not MNISTDataModule(root=str(root), binarize="none").binary


def test_binarisation_draws_with_pixel_probability():
    images = torch.full((200, 1, 28, 28), 64, dtype=torch.uint8)
    draws = binarize(images, seed=0).float() / 255
    assert draws.mean().item() == pytest.approx(64 / 255, abs=0.01)


def test_dynamic_draws_are_bernoulli_with_pixel_probability():
    torch.manual_seed(0)
    probabilities = torch.tensor([0.0, 1 / 255, 0.25, 0.5, 254 / 255, 1.0])
    draws = draw_binary(probabilities.expand(200_000, 6).contiguous())
    assert draws.dtype == torch.float32 and set(draws.unique().tolist()) <= {0.0, 1.0}
    assert draws[:, 0].sum() == 0 and draws[:, -1].sum() == len(draws)
    spread = (probabilities * (1 - probabilities) / len(draws)).sqrt()  # binomial std of a mean
    assert ((draws.mean(0) - probabilities).abs() <= 5 * spread + 1e-7).all()


def test_batches_reach_the_model_as_floats_in_unit_range(tiny_mnist):
    root, _ = tiny_mnist
    data = MNISTDataModule(root=str(root), download=False, val_size=10, batch_size=8)
    data.setup()
    batch = next(iter(data.train_dataloader()))
    assert batch[0].dtype == torch.uint8 and batch[0].shape == (8, 1, 28, 28)
    x, labels = data.on_after_batch_transfer(batch, 0)
    assert x.dtype == torch.float32 and x.min() >= 0 and x.max() <= 1 and labels.shape == (8,)


def test_a_checkpoint_of_epoch_0_skips_training_batches_only(tiny_mnist):
    """Restoring a datamodule saved after 2 training batches of epoch 0 (a best checkpoint of
    the first epoch, as trainer.validate and trainer.test load it) skips those 2 batches of the
    next training epoch 0 it serves; the validation and test loaders, whose samplers also sit
    at epoch 0, still see every example, before and after the training loader is made."""
    root, _ = tiny_mnist
    data = MNISTDataModule(root=str(root), download=False, val_size=10, batch_size=4)
    data.setup()
    data.load_state_dict({"epoch": 0, "batches": 2})

    def count(loader) -> int:
        return sum(len(images) for images, _ in loader)

    assert (count(data.test_dataloader()), count(data.val_dataloader())) == (20, 10)
    assert count(data.train_dataloader()) == 28 - 2 * 4  # 30 images: 7 whole batches, 2 done
    assert count(data.train_dataloader()) == 28  # the skip applies once
    assert (count(data.test_dataloader()), count(data.val_dataloader())) == (20, 10)


def test_fashion_mnist_reads_its_own_folder(tmp_path):
    write_tiny_mnist(tmp_path, folder="FashionMNIST")
    data = FashionMNISTDataModule(root=str(tmp_path), download=False, val_size=5)
    data.setup()
    assert len(data.datasets["train"]) == 35 and data.image_shape == (1, 28, 28)


def test_cifar10_reads_pickled_batches(tmp_path, monkeypatch):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    rows = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        rows[name] = rng.integers(0, 256, (4, 3072), dtype=np.uint8)
        batch = {"data": rows[name], "labels": list(range(4))}
        (folder / name).write_bytes(pickle.dumps(batch))
    (folder / "batches.meta").write_bytes(
        pickle.dumps({"label_names": [str(i) for i in range(10)]})
    )
    # torchvision checks the md5 sums of the real files; everything else runs as it would
    monkeypatch.setattr(datasets.cifar, "check_integrity", lambda path, md5=None: True)
    data = CIFAR10DataModule(root=str(tmp_path), download=False, val_size=5)
    data.setup()
    test = data.datasets["test"].images
    assert test.shape == (4, 3, 32, 32) and len(data.datasets["train"]) == 15
    # CIFAR rows are channel-major: the first 1024 values are the red plane
    assert np.array_equal(test[0, 0].flatten().numpy(), rows["test_batch"][0, :1024])


def test_missing_dataset_says_where_to_put_the_files(tmp_path):
    data = MNISTDataModule(root=str(tmp_path / "nowhere"), download=False)
    with pytest.raises(DatasetNotFoundError, match=r"MNIST not found .*MNIST/raw"):
        data.setup()


def test_dsprites_reads_the_npz_layout(tmp_path, monkeypatch):
    """The official file's keys and dtypes, at a size a test can write (the index grid shrunk)."""
    count = 64
    monkeypatch.setattr(DSpritesDataModule, "num_items", count)
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 2, (count, 64, 64), dtype=np.uint8)
    latents_classes = np.concatenate(
        [np.zeros((count, 1), np.int64), rng.integers(0, 6, (count, 5))], axis=1
    )
    path = tmp_path / "dsprites.npz"
    np.savez_compressed(
        path,
        imgs=imgs,
        latents_classes=latents_classes,
        latents_values=latents_classes.astype(np.float64),
    )
    data = DSpritesDataModule(path=str(path), size=40, val_fraction=0.25, test_fraction=0.25)
    data.setup()
    assert [len(data.datasets[s]) for s in ("train", "val", "test")] == [20, 10, 10]
    for split, indices in data.subset().items():
        dataset = data.datasets[split]
        assert np.array_equal(dataset.images[:, 0].numpy(), imgs[indices.numpy()] * 255)
        assert np.array_equal(dataset.labels.numpy(), latents_classes[indices.numpy(), 1:])


def test_dsprites_missing_file_says_what_to_do(tmp_path):
    data = DSpritesDataModule(path=str(tmp_path / "missing.npz"))
    with pytest.raises(DatasetNotFoundError, match="data.path"):
        data.setup()
