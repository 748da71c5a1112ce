"""Keyed per-sample augmentation: torchvision's distributions and semantics, and CPU == GPU path."""
from __future__ import annotations

import math

import pytest
import torch
from conftest import needs_cxx
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from selfsup.data import augment as A
from selfsup.data.augment import ViewSpec
from selfsup.data.synthetic import Synthetic
from selfsup.data.views import SOURCE
from selfsup.errors import ConfigError

SIMCLR = ViewSpec(key="view1", crop_scale=(0.08, 1.0), hflip=0.5, color_jitter=(0.4, 0.4, 0.4, 0.1),
                  color_jitter_p=0.8, grayscale_p=0.2, blur_p=0.5)
BYOL_2 = ViewSpec(key="view2", crop_scale=(0.08, 1.0), hflip=0.5, color_jitter=(0.4, 0.4, 0.2, 0.1),
                  color_jitter_p=0.8, grayscale_p=0.2, blur_p=0.1, solarize_p=0.2)
N = 20_000


def ks_statistic(a: torch.Tensor, b: torch.Tensor) -> float:
    """Two-sample Kolmogorov-Smirnov statistic."""
    values = torch.cat([a, b]).sort().values
    cdf = lambda x: torch.searchsorted(x.sort().values, values, right=True).double() / len(x)  # noqa: E731
    return float((cdf(a) - cdf(b)).abs().max())


def keys(n: int = N) -> torch.Tensor:
    return torch.arange(n, dtype=torch.int64) * 7919 + 13


@pytest.mark.parametrize("height,width", [(32, 32), (224, 160), (40, 400)])
def test_crop_boxes_follow_torchvision_random_resized_crop(height, width):
    spec = ViewSpec(crop_scale=(0.08, 1.0))
    u = A.draws(keys(), 0)
    boxes = A.crop_boxes(spec, u, torch.full((N,), float(height)), torch.full((N,), float(width)))
    top, left, h, w = boxes.unbind(1)
    assert (h >= 1).all() and (w >= 1).all() and (top >= 0).all() and (left >= 0).all()
    assert (top + h <= height).all() and (left + w <= width).all()
    torch.manual_seed(0)
    image = torch.zeros(1, height, width)
    crop = v2.RandomResizedCrop(8, scale=(0.08, 1.0))
    ref = torch.tensor([list(crop.make_params([image]).values()) for _ in range(5000)], dtype=torch.float32)
    ours_area, ref_area = (h * w) / (height * width), (ref[:, 2] * ref[:, 3]) / (height * width)
    # 5-sigma-ish bound for KS with n=20000 and m=5000: 1.95 * sqrt((n+m)/(n m)) ~ 0.031
    assert ks_statistic(ours_area, ref_area) < 0.035
    assert ks_statistic(w / h, ref[:, 3] / ref[:, 2]) < 0.035
    assert ks_statistic(top / height, ref[:, 0] / height) < 0.035


def test_photometric_draws_have_the_papers_probabilities_and_ranges():
    u = A.draws(keys(), 1)
    n = float(N)
    tol = 5 * math.sqrt(0.25 / n)
    assert abs((u[:, A._FLIP] < 0.5).float().mean() - 0.5) < tol
    assert abs((u[:, A._JITTER_ON] < 0.8).float().mean() - 0.8) < tol
    assert abs((u[:, A._GRAY] < 0.2).float().mean() - 0.2) < tol
    assert abs((u[:, A._SOLARIZE] < 0.2).float().mean() - 0.2) < tol
    order = torch.argsort(u[:, A._JITTER_ORDER:A._JITTER_ORDER + 4], dim=1)
    for position in range(4):  # a uniform permutation: each op is at each position a quarter of the time
        counts = torch.bincount(order[:, position], minlength=4).float() / n
        assert (counts - 0.25).abs().max() < tol
    assert 0 <= u.min() and u.max() < 1
    assert A.draws(keys(10), 0).ne(A.draws(keys(10), 1)).all()  # views draw independently


def test_colour_operations_match_torchvision():
    torch.manual_seed(0)
    x = torch.rand(1, 3, 16, 16)
    w = lambda v: torch.tensor(v).view(1, 1, 1, 1)  # noqa: E731 - a per-sample weight of a batch of one
    ours = {"brightness": A.grey_blend(x.clone(), w(1.3), w(0.0), w(0.0)),  # blends in place
            "contrast": A.grey_blend(x.clone(), w(0.7), w(0.0), w(1 - 0.7)),
            "saturation": A.grey_blend(x.clone(), w(1.4), w(1 - 1.4), w(0.0)),
            "hue -0.08": A.hue_shift(x, w(-0.08)), "hue 0.1": A.hue_shift(x, w(0.1))}
    theirs = {"brightness": TF.adjust_brightness(x, 1.3), "contrast": TF.adjust_contrast(x, 0.7),
              "saturation": TF.adjust_saturation(x, 1.4), "hue -0.08": TF.adjust_hue(x, -0.08),
              "hue 0.1": TF.adjust_hue(x, 0.1)}
    for op, image in ours.items():
        torch.testing.assert_close(image, theirs[op], atol=2e-6, rtol=0, msg=f"op {op}")
    torch.testing.assert_close(A.to_gray(x), TF.rgb_to_grayscale(x), atol=1e-6, rtol=0)


def test_colour_jitter_applies_each_samples_operations_in_its_own_order():
    """The batched jitter (two passes per position) against a plain loop: per sample, torchvision's four
    operations in the sample's drawn order with its factors, or nothing when jitter is not drawn."""
    torch.manual_seed(0)
    x = torch.rand(64, 3, 8, 8)
    spec = ViewSpec(color_jitter=(0.8, 0.8, 0.8, 0.2), color_jitter_p=0.8)
    u = A.draws(keys(64), 0)
    ours = A.color_jitter(x.clone(), spec, u)  # jitters in place
    functions = [TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue]
    for i in range(64):
        expected = x[i]
        if u[i, A._JITTER_ON] < 0.8:
            raw = u[i, A._JITTER_FACTORS:A._JITTER_FACTORS + 4].tolist()
            factors = [1 - 0.8 + 1.6 * raw[0], 1 - 0.8 + 1.6 * raw[1], 1 - 0.8 + 1.6 * raw[2], (2 * raw[3] - 1) * 0.2]
            for op in torch.argsort(u[i, A._JITTER_ORDER:A._JITTER_ORDER + 4]).tolist():
                expected = functions[op](expected, factors[op])
        torch.testing.assert_close(ours[i], expected, atol=1e-5, rtol=0, msg=f"sample {i}")
    grey = torch.rand(64, 1, 8, 8)  # one channel: brightness and contrast only
    ours = A.color_jitter(grey.clone(), spec, u)
    assert ours[u[:, A._JITTER_ON] >= 0.8].equal(grey[u[:, A._JITTER_ON] >= 0.8])


def test_blur_matches_torchvision_and_unblurred_samples_are_unchanged():
    torch.manual_seed(0)
    x = torch.rand(2, 3, 100, 100)
    u = torch.zeros(2, A.NUM_UNIFORMS)
    u[0, A._BLUR_ON], u[1, A._BLUR_ON] = 0.0, 0.99  # first blurred, second not
    u[:, A._BLUR_SIGMA] = 0.5
    out = A.gaussian_blur(x.clone(), ViewSpec(blur_p=0.5, blur_sigma=(0.1, 2.0)), u)  # blurs in place
    torch.testing.assert_close(out[0], TF.gaussian_blur(x[0], [9, 9], [1.05, 1.05]), atol=1e-5, rtol=0)
    torch.testing.assert_close(out[1], x[1], atol=1e-6, rtol=0)


def test_solarize_inverts_bright_pixels_only_where_drawn():
    x = torch.tensor([0.2, 0.5, 0.9]).view(1, 1, 1, 3).expand(2, 1, 1, 3)
    u = torch.zeros(2, A.NUM_UNIFORMS)
    u[1, A._SOLARIZE] = 0.99
    out = A.photometric(x, ViewSpec(solarize_p=0.2), u)
    torch.testing.assert_close(out[0].flatten(), TF.solarize(x[0], 0.5).flatten())
    torch.testing.assert_close(out[1], x[1])


@pytest.mark.parametrize("spec", [SIMCLR, BYOL_2, ViewSpec(crop_scale=(0.2, 1.0), hflip=0.5)])
@pytest.mark.parametrize("size,channels", [(32, 3), (28, 1), (96, 3)])
def test_gpu_path_on_a_batch_equals_the_cpu_path_per_sample(spec, size, channels):
    g = torch.Generator().manual_seed(size)
    images = torch.randint(0, 256, (6, channels, size, size), dtype=torch.uint8, generator=g)
    k = keys(6)
    batched = A.augment(images, k, spec, 1, size)  # what the device runs, here on CPU tensors
    assert batched.dtype == torch.float32 and batched.shape == (6, channels, size, size)
    for i in range(6):
        cpu = A.CPUView(spec, 1, size)(images[i], int(k[i]))
        assert cpu.dtype == torch.uint8 and cpu.shape == (channels, size, size)
        torch.testing.assert_close(cpu.float() / 255, batched[i], atol=0.5 / 255 + 1e-5, rtol=0)


@pytest.mark.parametrize("chunk_values", [2**20, 2 * 3 * 32 * 32])  # the whole batch at once; two images a chunk
def test_workers_make_a_batchs_views_as_they_would_image_by_image(monkeypatch, chunk_values):
    """CPU mode finishes the views on the collated batch in the worker (views.worker_batch_views), in chunks of
    samples: each view is the one made from its image alone (CPUView)."""
    from selfsup.data import cpu_views
    from selfsup.data import views as V

    monkeypatch.setattr(V, "CHUNK_VALUES", chunk_values)
    monkeypatch.setattr(cpu_views, "usable", lambda images: False)  # chunks are the tensor route's
    images = torch.randint(0, 256, (5, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(3))
    batch = V.worker_batch_views({V.SOURCE: images, "key": keys(5)}, [SIMCLR, BYOL_2], 32)
    assert V.SOURCE not in batch
    for view, spec in enumerate([SIMCLR, BYOL_2]):
        assert batch[spec.key].dtype == torch.uint8 and batch[spec.key].shape == (5, 3, 32, 32)
        for i in range(5):
            alone = A.CPUView(spec, view, 32)(images[i], int(keys(5)[i]))
            assert (batch[spec.key][i].int() - alone.int()).abs().max() <= 1  # at most a rounding tie apart


def two_view_module(augment_on: str) -> Synthetic:
    views = [{"key": "view1", "crop_scale": [0.08, 1.0], "hflip": 0.5, "color_jitter": [0.4, 0.4, 0.4, 0.1],
              "grayscale_p": 0.2}, {"key": "view2", "crop_scale": [0.08, 1.0], "hflip": 0.5,
                                    "color_jitter": [0.4, 0.4, 0.2, 0.1], "grayscale_p": 0.2, "solarize_p": 0.2}]
    dm = Synthetic(num_samples=64, num_workers=0, batch_size=16, views=views, augment_on=augment_on)
    dm.setup()
    return dm


def test_both_paths_give_two_different_views_of_the_right_shape_and_the_same_pixels():
    cpu, gpu = two_view_module("cpu"), two_view_module("gpu")
    cpu_batch = next(iter(cpu.train_dataloader()))
    gpu_batch = next(iter(gpu.train_dataloader()))
    assert cpu_batch["view1"].dtype == torch.uint8 and cpu_batch["view1"].shape == (16, 3, 32, 32)
    assert set(gpu_batch) == {SOURCE, "label", "index", "key", "skipped"}  # workers only decode
    cpu_out, gpu_out = cpu.on_device(dict(cpu_batch)), gpu.on_device(dict(gpu_batch))
    for out in (cpu_out, gpu_out):
        assert out["view1"].dtype == torch.float32 and out["view1"].shape == (16, 3, 32, 32)
        assert SOURCE not in out
        assert not torch.allclose(out["view1"], out["view2"])
    for key in ("view1", "view2"):
        torch.testing.assert_close(cpu_out[key], gpu_out[key], atol=(0.5 / 255 + 1e-5) / 0.25, rtol=0)


def test_multi_crop_views_have_their_own_size_in_both_paths_and_the_same_pixels():
    """DINO's global and local crops: a view's `size` sets its side in the CPU workers and on the device alike."""
    views = [{"key": "global1", "crop_scale": [0.32, 1.0], "hflip": 0.5},
             {"key": "local1", "size": 12, "crop_scale": [0.05, 0.32], "hflip": 0.5,
              "color_jitter": [0.4, 0.4, 0.2, 0.1]}]
    out = {}
    for path in ("cpu", "gpu"):
        dm = Synthetic(num_samples=64, num_workers=0, batch_size=8, views=views, augment_on=path)
        dm.setup()
        out[path] = dm.on_device(dict(next(iter(dm.train_dataloader()))))
        assert out[path]["global1"].shape == (8, 3, 32, 32) and out[path]["local1"].shape == (8, 3, 12, 12)
    for key in ("global1", "local1"):
        torch.testing.assert_close(out["cpu"][key], out["gpu"][key], atol=(0.5 / 255 + 1e-5) / 0.25, rtol=0)
    with pytest.raises(ConfigError, match="size must be a whole number of pixels"):
        ViewSpec.parse({"key": "local1", "size": 0})


def test_unknown_view_option_is_named():
    with pytest.raises(ConfigError, match="colour_jitter"):
        ViewSpec.parse({"key": "image", "colour_jitter": [0.4, 0.4, 0.4, 0.1]})


def test_image_folder_on_gpu_path_crops_in_workers_and_matches_the_cpu_path(tmp_path):
    """Images of different sizes cannot be batched whole: workers crop, the device does the colours."""
    from PIL import Image

    from selfsup.data.image_folder import ImageFolder

    g = torch.Generator().manual_seed(0)
    for i, (h, w) in enumerate([(40, 60), (50, 35), (64, 64), (33, 80)]):
        (tmp_path / f"class{i % 2}").mkdir(exist_ok=True)
        pixels = torch.randint(0, 256, (h, w, 3), dtype=torch.uint8, generator=g).numpy()
        Image.fromarray(pixels).save(tmp_path / f"class{i % 2}" / f"{i}.png")
    views = [{"key": "view1", "crop_scale": [0.2, 1.0], "hflip": 0.5, "color_jitter": [0.4, 0.4, 0.4, 0.1]},
             {"key": "view2", "crop_scale": [0.2, 1.0], "grayscale_p": 0.5, "solarize_p": 0.5}]
    batches = {}
    for mode in ("cpu", "gpu"):
        dm = ImageFolder(root=str(tmp_path), image_size=24, batch_size=4, num_workers=0, views=views, augment_on=mode)
        dm.setup()
        batch = next(iter(dm.train_dataloader()))
        assert batch["view1"].dtype == torch.uint8 and batch["view1"].shape == (4, 3, 24, 24) and SOURCE not in batch
        batches[mode] = dm.on_device(batch)
    # The GPU path starts from crops already rounded to uint8, and jitter factors up to 1.4 scale that rounding.
    for key in ("view1", "view2"):
        torch.testing.assert_close(batches["gpu"][key], batches["cpu"][key], atol=(2 / 255) / 0.225, rtol=0)


@needs_cxx
def test_compiled_gpu_views_equal_the_eager_ones():
    """compile=true compiles the GPU-mode views (data.compile_views): one fused graph, the same images."""
    gpu = two_view_module("gpu")
    batch = next(iter(gpu.train_dataloader()))
    eager = gpu.on_device(dict(batch))
    from torch._dynamo.utils import counters

    graphs = counters["stats"]["unique_graphs"]
    gpu.compile_views()
    compiled = gpu.on_device(dict(batch))
    assert counters["stats"]["unique_graphs"] == graphs + 1  # both views in one graph
    for key in ("view1", "view2"):
        torch.testing.assert_close(compiled[key], eager[key], atol=1e-4, rtol=0)


def dino_views(image_size: int, patch: int) -> list[ViewSpec]:
    """The views of configs/objective/dino.yaml, written out and sized as the assembly layer does."""
    from omegaconf import OmegaConf

    from selfsup.objectives.base import expand_copies

    root = __import__("pathlib").Path(__file__).resolve().parents[2]
    views = expand_copies(OmegaConf.to_container(OmegaConf.load(root / "configs/objective/dino.yaml").views))
    A.resolve_view_sizes(views, image_size, patch)
    return [ViewSpec.parse(v) for v in views]


def test_dinos_views_are_two_globals_and_four_locals_with_the_papers_parameters():
    specs = dino_views(224, 16)
    assert [s.key for s in specs] == ["global1", "global2", "local1", "local2", "local3", "local4"]
    assert [s.size for s in specs] == [None, None, 96, 96, 96, 96]
    assert [s.blur_p for s in specs] == [1.0, 0.1, 0.5, 0.5, 0.5, 0.5]
    assert [s.solarize_p for s in specs] == [0.0, 0.2, 0.0, 0.0, 0.0, 0.0]
    assert {s.crop_scale for s in specs} == {(0.32, 1.0), (0.05, 0.32)}
    assert [s.size for s in dino_views(28, 4)[2:3]] == [12] and [s.size for s in dino_views(224, 14)[2:3]] == [98]


@pytest.mark.parametrize("view", [0, 1, 2])
def test_dinos_views_on_the_device_equal_the_workers_per_sample(view):
    """Each DINO view (global 1 with blur always, global 2 with solarize, a local crop) has the same per-sample
    parameters, so the same distribution, in both augmentation paths; at 96 px, where blur applies."""
    spec = dino_views(96, 8)[view]
    size = spec.size or 96
    images = torch.randint(0, 256, (6, 3, 96, 96), dtype=torch.uint8, generator=torch.Generator().manual_seed(view))
    batched = A.augment(images, keys(6), spec, view, size)
    assert batched.shape == (6, 3, size, size)
    for i in range(6):
        cpu = A.CPUView(spec, view, size)(images[i], int(keys(6)[i]))
        torch.testing.assert_close(cpu.float() / 255, batched[i], atol=0.5 / 255 + 1e-5, rtol=0)


def test_view_sizes_resolve_to_patch_multiples_and_bad_ones_are_named():
    views = [{"key": "a", "size": 0.43}, {"key": "b", "size": 12}, {"key": "c"}]
    A.resolve_view_sizes(views, 28, 4)
    assert [v.get("size") for v in views] == [12, 12, None]
    with pytest.raises(ConfigError, match="13 px does not divide into the backbone's 4 px patches"):
        A.resolve_view_sizes([{"key": "a", "size": 13}], 28, 4)
    with pytest.raises(ConfigError, match="fraction of the image size, and the data has none"):
        A.resolve_view_sizes([{"key": "a", "size": 0.5}], None, 4)
