"""Tests for fastvae.data: procedural shapes, bundled digits, .npy/.npz arrays, wrapped Datasets."""

import math
import sys
import time

import numpy as np
import pytest
import torch

from fastvae.data import (
    FACTOR_NAMES,
    FACTOR_SIZES,
    ArrayDataset,
    DataError,
    Shapes,
    get_dataset,
    load_array,
    render_shapes,
    wrap_dataset,
)

SQUARE, ELLIPSE, HEART = 0, 1, 2


@pytest.fixture(scope="module")
def shapes():
    return Shapes()


def _pose(shape=SQUARE, scale=5, orientation=0, pos_x=16, pos_y=16):
    return [shape, scale, orientation, pos_x, pos_y]


def _centre_of_mass(images):
    """(x, y) centre of mass in pixels (column, row) of images (B, 1, H, W)."""
    images = images[:, 0]
    coords = torch.arange(images.shape[-1], dtype=torch.float32)
    mass = images.sum(dim=(1, 2))
    return (images.sum(1) * coords).sum(1) / mass, (images.sum(2) * coords).sum(1) / mass


# ----------------------------------------------------------------------------- shapes: grid


def test_factor_grid_sizes_and_len(shapes):
    assert FACTOR_NAMES == ("shape", "scale", "orientation", "posX", "posY")
    assert FACTOR_SIZES == (3, 6, 40, 32, 32)
    assert len(shapes) == 3 * 6 * 40 * 32 * 32 == 737280
    assert shapes.sample_shape == (1, 64, 64)
    info = shapes.factors
    assert info.names == FACTOR_NAMES and info.sizes == FACTOR_SIZES
    assert [len(v) for v in info.values] == list(FACTOR_SIZES)
    torch.testing.assert_close(info.values[1], torch.linspace(0.5, 1, 6))
    torch.testing.assert_close(info.values[2], torch.linspace(0, 2 * math.pi, 40))
    torch.testing.assert_close(info.values[3], torch.linspace(0, 1, 32))


def test_index_factor_round_trip(shapes):
    last = len(shapes) - 1
    factors = shapes.index_to_factors(torch.tensor([0, 1, 32, 32 * 32, last]))
    assert factors.dtype == torch.long and factors.shape == (5, 5)
    assert factors[0].tolist() == [0, 0, 0, 0, 0]
    assert factors[1].tolist() == [0, 0, 0, 0, 1]  # posY varies fastest
    assert factors[2].tolist() == [0, 0, 0, 1, 0]
    assert factors[3].tolist() == [0, 0, 1, 0, 0]
    assert factors[4].tolist() == [s - 1 for s in FACTOR_SIZES]

    index = torch.randint(0, len(shapes), (4096,), generator=torch.Generator().manual_seed(0))
    factors = shapes.index_to_factors(index)
    assert ((factors >= 0) & (factors < torch.tensor(FACTOR_SIZES))).all()
    assert torch.equal(shapes.factors_to_index(factors), index)

    values = shapes.factor_values(factors)
    assert values.shape == (4096, 5) and values.dtype == torch.float32
    torch.testing.assert_close(values[:, 1], torch.linspace(0.5, 1, 6)[factors[:, 1]])

    with pytest.raises(IndexError):
        shapes.index_to_factors(torch.tensor([len(shapes)]))
    with pytest.raises(IndexError):
        shapes[len(shapes)]


def test_getitem_matches_batch_and_render(shapes):
    index = torch.tensor([0, 12345, 700000, len(shapes) - 1])
    images = shapes.batch(index)
    assert images.shape == (4, 1, 64, 64)
    for row, i in enumerate(index.tolist()):
        image, factors = shapes[i]
        assert torch.equal(image, images[row])
        assert torch.equal(factors, shapes.index_to_factors(torch.tensor([i]))[0])
        assert torch.equal(shapes.render(factors), images[row : row + 1])
    assert torch.equal(shapes[-1][0], images[-1])


def test_images_are_binary_64x64(shapes):
    images, factors = shapes.sample(64, generator=torch.Generator().manual_seed(1))
    assert images.shape == (64, 1, 64, 64) and images.dtype == torch.float32
    assert factors.shape == (64, 5) and factors.dtype == torch.long
    assert set(images.unique().tolist()) <= {0.0, 1.0}
    assert (images.sum(dim=(1, 2, 3)) > 20).all()  # every sprite is visible


# ------------------------------------------------------------------------ shapes: determinism


def test_stream_is_deterministic_for_a_seed():
    first = [batch for _, batch in zip(range(3), Shapes(seed=3).stream(16))]
    second = [batch for _, batch in zip(range(3), Shapes(seed=3).stream(16))]
    other = [batch for _, batch in zip(range(3), Shapes(seed=4).stream(16))]
    for (x1, f1), (x2, f2) in zip(first, second):
        assert torch.equal(x1, x2) and torch.equal(f1, f2)
    assert not all(torch.equal(f1, f3) for (_, f1), (_, f3) in zip(first, other))
    # consecutive batches of one stream differ
    assert not torch.equal(first[0][1], first[1][1])


def test_sample_is_deterministic_for_a_generator(shapes):
    x1, f1 = shapes.sample(32, generator=torch.Generator().manual_seed(7))
    x2, f2 = shapes.sample(32, generator=7)
    assert torch.equal(f1, f2) and torch.equal(x1, x2)
    # the dataset's own generator is seeded by the dataset seed
    assert torch.equal(Shapes(seed=5).sample(8)[1], Shapes(seed=5).sample(8)[1])
    assert not torch.equal(Shapes(seed=5).sample(8)[1], Shapes(seed=6).sample(8)[1])


def test_sample_covers_every_factor_value(shapes):
    factors = shapes.sample_factors(20000, generator=0)
    for k, size in enumerate(FACTOR_SIZES):
        counts = torch.bincount(factors[:, k], minlength=size)
        assert len(counts) == size and (counts > 0).all()


# ------------------------------------------------------------------------- shapes: geometry


@pytest.mark.parametrize("shape", [SQUARE, ELLIPSE, HEART])
def test_position_moves_centre_of_mass_monotonically(shapes, shape):
    steps = range(0, 32, 3)
    com_x, com_y = _centre_of_mass(shapes.render([_pose(shape, 3, 7, p, 16) for p in steps]))
    assert (com_x.diff() > 0).all()
    assert com_y.std() < 0.5  # posX leaves y alone
    com_x, com_y = _centre_of_mass(shapes.render([_pose(shape, 3, 7, 16, p) for p in steps]))
    assert (com_y.diff() > 0).all()  # posY grows downwards, like the row index
    assert com_x.std() < 0.5


@pytest.mark.parametrize("shape", [SQUARE, ELLIPSE, HEART])
def test_scale_grows_area_monotonically(shapes, shape):
    area = shapes.render([_pose(shape, s, 5) for s in range(6)]).sum(dim=(1, 2, 3))
    assert (area.diff() > 0).all()
    # area goes with scale^2: scale 1 vs 0.5 is 4x
    assert 3.5 < float(area[-1] / area[0]) < 4.5


def test_three_shapes_differ_at_the_same_pose_with_similar_area(shapes):
    images = shapes.render([_pose(s, 5, 3) for s in (SQUARE, ELLIPSE, HEART)])
    for a in range(3):
        for b in range(a + 1, 3):
            assert (images[a] != images[b]).sum() > 30
    area = images.sum(dim=(1, 2, 3))
    assert float(area.max() / area.min()) < 1.1


def test_full_turn_gives_the_same_image(shapes):
    # first vs last orientation (0 and 2*pi) for every shape and scale and a grid of positions
    grid = torch.cartesian_prod(torch.arange(3), torch.arange(6), torch.arange(0, 32, 5), torch.arange(0, 32, 5))
    first = torch.stack([grid[:, 0], grid[:, 1], torch.zeros_like(grid[:, 0]), grid[:, 2], grid[:, 3]], dim=1)
    last = first.clone()
    last[:, 2] = FACTOR_SIZES[2] - 1
    assert torch.equal(shapes.render(first), shapes.render(last))


def test_rotation_symmetries():
    n = 4
    shape = torch.tensor([SQUARE, ELLIPSE, HEART, ELLIPSE])
    scale = torch.full((n,), 0.8)
    pos_x = torch.tensor([0.3, 0.6, 0.45, 0.5])
    pos_y = torch.tensor([0.55, 0.4, 0.5, 0.5])
    turn = torch.tensor([math.pi / 2, math.pi, math.pi, math.pi / 2])
    upright = render_shapes(shape, scale, torch.zeros(n), pos_x, pos_y)
    turned = render_shapes(shape, scale, turn, pos_x, pos_y)
    mismatch = (upright != turned).sum(dim=(1, 2, 3))
    assert mismatch[0] <= 4  # a square turned by pi/2 is itself (up to boundary rounding)
    assert mismatch[1] <= 4  # so is an ellipse turned by pi
    assert mismatch[2] > 30  # a heart turned by pi is upside down
    assert mismatch[3] > 30  # an ellipse turned by pi/2 is not itself
    # the nearest grid orientation to pi/2 (index 10, 92.3 degrees) is close for the square
    shapes = Shapes()
    near = shapes.render([_pose(SQUARE, 5, 0), _pose(SQUARE, 5, 10)])
    assert (near[0] != near[1]).float().mean() < 0.01


def test_heart_points_down_and_ellipse_is_wide_at_orientation_zero(shapes):
    heart, ellipse = shapes.render([_pose(HEART, 5, 0), _pose(ELLIPSE, 5, 0)])
    rows = heart[0].sum(dim=1).nonzero().squeeze(1)
    top, bottom = heart[0, rows[0] + 1], heart[0, rows[-1]]
    assert bottom.sum() < top.sum()  # narrow tip at the bottom, wide lobes on top
    assert top.sum() > 0 and heart[0, rows[0] + 1].nonzero().squeeze(1).diff().max() > 1  # two lobes
    width = ellipse[0].sum(dim=0).count_nonzero()
    height = ellipse[0].sum(dim=1).count_nonzero()
    assert 1.7 < float(width / height) < 2.3


def test_render_is_fast_on_cpu(shapes):
    # One thread: on a busy machine a multi-threaded pool can stall for a scheduler slice, which
    # says nothing about the renderer. The bound is generous.
    factors = shapes.sample_factors(256, generator=0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        shapes.render(factors)
        best = math.inf
        for _ in range(5):
            start = time.perf_counter()
            shapes.render(factors)
            best = min(best, time.perf_counter() - start)
    finally:
        torch.set_num_threads(threads)
    assert best < 0.1


def test_accelerator_strategy_matches_cpu_strategy(shapes):
    # render_shapes picks a sync-free strategy off the CPU; check it against the CPU one here
    from fastvae.data import shapes as shapes_module

    factors = shapes.sample_factors(96, generator=3)
    grouped = shapes.render(factors)
    original = shapes_module._render_grouped
    try:
        shapes_module._render_grouped = shapes_module._render_selected
        selected = shapes.render(factors)
    finally:
        shapes_module._render_grouped = original
    assert torch.equal(grouped, selected)
    assert shapes.render(torch.zeros(0, 5, dtype=torch.long)).shape == (0, 1, 64, 64)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    cpu, gpu = Shapes(seed=2), Shapes(device="cuda", seed=2)
    x_cpu, f_cpu = next(cpu.stream(512))
    x_gpu, f_gpu = next(gpu.stream(512))
    assert x_gpu.device.type == "cuda" and f_gpu.device.type == "cuda"
    assert torch.equal(f_cpu, f_gpu.cpu())
    assert (x_cpu != x_gpu.cpu()).float().mean() < 1e-4  # boundary pixels may round differently
    index = torch.randperm(len(gpu), device="cuda")[:64]
    assert torch.equal(gpu.batch(index).cpu(), gpu.render(gpu.index_to_factors(index)).cpu())


# ----------------------------------------------------------------------------------- digits


def test_digits():
    pytest.importorskip("sklearn")
    digits = get_dataset("digits")
    assert len(digits) == 1797 and digits.sample_shape == (1, 8, 8)
    images = digits.batch(torch.arange(len(digits)))
    assert images.dtype == torch.float32 and images.shape == (1797, 1, 8, 8)
    assert images.min() == 0 and images.max() == 1
    assert digits.value_range == (0.0, 1.0)
    assert sorted(digits.labels.unique().tolist()) == list(range(10))
    image, label = digits[3]
    assert torch.equal(image, images[3]) and label == digits.labels[3]
    assert digits.factors is None


def test_digits_without_sklearn_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn", None)
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
    with pytest.raises(ImportError, match=r"pip install fastvae\[digits\]"):
        get_dataset("digits")


# ----------------------------------------------------------------------------------- arrays


def test_npy_float_array(tmp_path):
    data = np.random.default_rng(0).random((10, 3, 4, 4))
    path = tmp_path / "floats.npy"
    np.save(path, data)
    ds = get_dataset(str(path))
    assert isinstance(ds, ArrayDataset)
    assert len(ds) == 10 and ds.sample_shape == (3, 4, 4)
    batch = ds.batch(torch.tensor([2, 0]))
    assert batch.dtype == torch.float32
    torch.testing.assert_close(batch, torch.from_numpy(data[[2, 0]]).float())
    torch.testing.assert_close(ds[5], torch.from_numpy(data[5]).float())
    assert ds.value_range == (pytest.approx(data.min()), pytest.approx(data.max()))
    assert ds.factors is None and ds.labels is None


def test_npy_out_of_unit_range_is_reported_not_changed(tmp_path):
    path = tmp_path / "wide.npy"
    np.save(path, np.array([[-2.0, 0.5], [3.0, 1.0]], dtype=np.float32))
    ds = load_array(path)
    assert ds.value_range == (-2.0, 3.0)
    assert ds.batch([1]).tolist() == [[3.0, 1.0]]


def test_uint8_images_are_scaled_and_3d_gets_a_channel(tmp_path):
    images = np.random.default_rng(1).integers(0, 256, (6, 5, 7), dtype=np.uint8)
    path = tmp_path / "images.npy"
    np.save(path, images)
    ds = load_array(path)
    assert ds.sample_shape == (1, 5, 7)
    torch.testing.assert_close(ds.batch(torch.arange(6)), torch.from_numpy(images).float().unsqueeze(1) / 255)
    assert ds.value_range == (pytest.approx(images.min() / 255), pytest.approx(images.max() / 255))

    binary = np.random.default_rng(2).integers(0, 2, (4, 8, 8), dtype=np.uint8)  # dSprites-style 0/1
    path = tmp_path / "binary.npy"
    np.save(path, binary)
    assert torch.equal(load_array(path).batch(torch.arange(4)), torch.from_numpy(binary).float().unsqueeze(1))


def test_npz_single_array_and_named_key(tmp_path):
    single = tmp_path / "single.npz"
    np.savez(single, np.ones((3, 2)))
    assert get_dataset(str(single)).sample_shape == (2,)
    several = tmp_path / "several.npz"
    np.savez(several, images=np.zeros((5, 4, 4), np.float32), labels=np.arange(5))
    ds = get_dataset(f"{several}:images")
    assert len(ds) == 5 and ds.sample_shape == (1, 4, 4)
    with pytest.raises(DataError, match=r"several\.npz.*2 arrays"):
        get_dataset(str(several))
    with pytest.raises(DataError, match=r"several\.npz.*no array named 'nope'"):
        get_dataset(f"{several}:nope")


def _save_bad(tmp_path, kind):
    if kind == "missing":
        return tmp_path / "missing.npy"
    path = tmp_path / f"{kind}.npy"
    if kind == "malformed":
        path.write_text("not an array")
    elif kind == "truncated":
        np.save(path, np.zeros((100, 100)))
        path.write_bytes(path.read_bytes()[:500])
    elif kind == "one_dim":
        np.save(path, np.arange(5.0))
    elif kind == "strings":
        np.save(path, np.array([["a", "b"], ["c", "d"]]))
    elif kind == "objects":
        np.save(path, np.array([[{}, 1]], dtype=object), allow_pickle=True)
    elif kind == "complex":
        np.save(path, np.zeros((2, 2), dtype=complex))
    elif kind == "nan":
        np.save(path, np.array([[0.0, np.nan], [1.0, 0.0]]))
    elif kind == "inf":
        np.save(path, np.array([[0.0, 1.0], [np.inf, 0.0]], dtype=np.float32))
    elif kind == "empty":
        np.save(path, np.zeros((0, 3)))
    return path


@pytest.mark.parametrize(
    "kind, expected",
    [
        ("missing", "not found"),
        ("malformed", "malformed"),
        ("truncated", "malformed"),
        ("one_dim", "at least 2 dimensions"),
        ("strings", "numeric"),
        ("objects", "numeric"),
        ("complex", "numeric"),
        ("nan", "finite"),
        ("inf", "finite"),
        ("empty", "non-empty"),
    ],
)
def test_bad_arrays_raise_data_error_naming_the_file(tmp_path, kind, expected):
    path = _save_bad(tmp_path, kind)
    with pytest.raises(DataError, match=expected) as info:
        get_dataset(str(path))
    assert path.name in str(info.value)
    assert isinstance(info.value, ValueError)


def test_malformed_npz_and_unknown_names(tmp_path):
    path = tmp_path / "broken.npz"
    path.write_bytes(b"PK not really a zip")
    with pytest.raises(DataError, match=r"broken\.npz.*malformed"):
        get_dataset(str(path))
    with pytest.raises(DataError, match="unknown dataset"):
        get_dataset("shapez")
    other = tmp_path / "table.csv"
    other.write_text("1,2\n")
    with pytest.raises(DataError, match=r"table\.csv.*\.npy or \.npz"):
        get_dataset(str(other))


# ------------------------------------------------------------------------- torch datasets


def test_wrap_torch_dataset_with_labels():
    images = torch.rand(12, 1, 6, 6)
    labels = torch.arange(12) % 3
    ds = get_dataset(torch.utils.data.TensorDataset(images, labels))
    assert ds.sample_shape == (1, 6, 6) and len(ds) == 12
    torch.testing.assert_close(ds.batch(torch.tensor([4, 1])), images[[4, 1]])
    assert torch.equal(ds.labels, labels)


def test_wrap_plain_dataset_and_arrays():
    class Plain(torch.utils.data.Dataset):
        def __len__(self):
            return 5

        def __getitem__(self, i):
            return np.full((2, 3), i, dtype=np.float32)

    ds = wrap_dataset(Plain())
    assert ds.sample_shape == (1, 2, 3) and ds.labels is None  # (N, H, W) gets a channel
    assert ds.batch([4]).tolist() == [[[[4.0] * 3] * 2]]
    assert get_dataset(torch.zeros(3, 4)).sample_shape == (4,)

    class Ragged(Plain):
        def __getitem__(self, i):
            return torch.zeros(i + 1, 2)

    with pytest.raises(DataError, match="shape"):
        wrap_dataset(Ragged())

    class Words(Plain):
        def __getitem__(self, i):
            return np.array(["a", "b"])

    with pytest.raises(DataError, match="Words.*numeric"):
        wrap_dataset(Words())


def test_get_dataset_defaults_to_shapes():
    ds = get_dataset(seed=9)
    assert isinstance(ds, Shapes) and ds.seed == 9 and ds.device == torch.device("cpu")
    assert get_dataset(ds) is ds
