import math

import torch

from vaelab.data.sprites import (
    FACTOR_SIZES,
    NUM_SPRITES,
    Sprites,
    SpritesDataModule,
    factor_values,
    index_to_classes,
    render,
)


def classes(shape=0, scale=5, orientation=0, pos_x=16, pos_y=16) -> torch.Tensor:
    return torch.tensor([[shape, scale, orientation, pos_x, pos_y]])


def centroid(image: torch.Tensor) -> tuple[float, float]:
    rows, cols = image[0].nonzero(as_tuple=True)
    return rows.float().mean().item(), cols.float().mean().item()


def test_factor_grid_matches_dsprites():
    assert FACTOR_SIZES == (3, 6, 40, 32, 32) and NUM_SPRITES == 737_280
    values = factor_values()
    torch.testing.assert_close(values[1], torch.linspace(0.5, 1, 6, dtype=torch.float64))
    assert values[2][0] == 0 and math.isclose(values[2][-1], 2 * math.pi)
    assert values[3][0] == 0 and values[3][-1] == 1 and len(values[4]) == 32


def test_index_order_has_pos_y_fastest():
    assert index_to_classes(torch.tensor([0]))[0].tolist() == [0, 0, 0, 0, 0]
    assert index_to_classes(torch.tensor([1]))[0].tolist() == [0, 0, 0, 0, 1]
    assert index_to_classes(torch.tensor([32]))[0].tolist() == [0, 0, 0, 1, 0]
    assert index_to_classes(torch.tensor([32 * 32]))[0].tolist() == [0, 0, 1, 0, 0]
    assert index_to_classes(torch.tensor([40 * 32 * 32]))[0].tolist() == [0, 1, 0, 0, 0]
    assert index_to_classes(torch.tensor([NUM_SPRITES - 1]))[0].tolist() == [2, 5, 39, 31, 31]
    # every index maps to a distinct class tuple, in lexicographic order
    all_classes = index_to_classes(torch.arange(NUM_SPRITES))
    strides = torch.tensor([6 * 40 * 32 * 32, 40 * 32 * 32, 32 * 32, 32, 1])
    assert torch.equal((all_classes * strides).sum(1), torch.arange(NUM_SPRITES))


def test_rendering_is_binary_and_deterministic():
    indices = torch.randint(0, NUM_SPRITES, (64,), generator=torch.Generator().manual_seed(0))
    first, second = (
        Sprites(indices).__getitems__(list(range(64)))[0],
        render(index_to_classes(indices)),
    )
    assert first.shape == (64, 1, 64, 64) and first.dtype == torch.uint8
    assert set(first.unique().tolist()) <= {0, 255}
    assert torch.equal(first, second)
    assert (first.flatten(1) > 0).sum(1).min() > 0  # every sprite is visible
    image, factor_classes = Sprites(indices)[3]
    assert torch.equal(image, first[3]) and torch.equal(
        factor_classes, index_to_classes(indices[3:4])[0]
    )


def test_factors_move_scale_and_change_the_sprite():
    left, right = render(classes(pos_x=0))[0], render(classes(pos_x=31))[0]
    top, bottom = render(classes(pos_y=0))[0], render(classes(pos_y=31))[0]
    assert centroid(left)[1] < 20 < 44 < centroid(right)[1]  # pos_x moves along columns
    assert centroid(top)[0] < 20 < 44 < centroid(bottom)[0]  # pos_y moves along rows
    small, large = render(classes(scale=0))[0].sum(), render(classes(scale=5))[0].sum()
    assert 3 < large / small < 5  # area grows with scale^2 (0.5 -> 1)
    shapes = [render(classes(shape=s))[0] for s in range(3)]
    assert not torch.equal(shapes[0], shapes[1]) and not torch.equal(shapes[1], shapes[2])
    upright, turned = (
        render(classes(shape=1, orientation=0))[0],
        render(classes(shape=1, orientation=10))[0],
    )
    assert not torch.equal(upright, turned)
    full_turn = render(classes(shape=1, orientation=39))[0]  # 2 pi: the same as 0 (as in dSprites)
    assert (upright != full_turn).float().mean() < 0.002


def test_datamodule_subset_and_splits_are_seeded_and_disjoint():
    data = SpritesDataModule(size=400, val_fraction=0.1, test_fraction=0.2, seed=3)
    parts = data.subset()
    assert {k: len(v) for k, v in parts.items()} == {"val": 40, "test": 80, "train": 280}
    joined = torch.cat(list(parts.values()))
    assert len(joined.unique()) == 400
    again = SpritesDataModule(size=400, val_fraction=0.1, test_fraction=0.2, seed=3).subset()
    assert all(torch.equal(parts[k], again[k]) for k in parts)
    other = SpritesDataModule(size=400, val_fraction=0.1, test_fraction=0.2, seed=4).subset()
    assert not torch.equal(parts["train"], other["train"])


def test_in_memory_and_on_the_fly_give_the_same_batches():
    memory = SpritesDataModule(size=100, batch_size=10, in_memory=True)
    lazy = SpritesDataModule(size=100, batch_size=10, in_memory=False)
    memory.setup(), lazy.setup()
    for split in ("train", "val", "test"):
        a = memory.datasets[split].__getitems__([0, 2, 4])
        b = lazy.datasets[split].__getitems__([0, 2, 4])
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    images, labels = next(iter(memory.val_dataloader()))
    assert images.shape == (5, 1, 64, 64) and labels.shape == (5, 5)
