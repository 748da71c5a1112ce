"""cpu_views.c makes the views augment.py's tensor route makes, from the same parameters, on any thread count."""
from __future__ import annotations

import multiprocessing
import warnings

import pytest
import torch

from selfsup.data import augment as A
from selfsup.data import cpu_views
from selfsup.data.augment import ViewSpec
from selfsup.data.synthetic import Synthetic

needs_kernel = pytest.mark.skipif(cpu_views.library() is None,
                                  reason="no C compiler for cpu_views.c (apt-get install -y gcc)")

SIMCLR = ViewSpec(crop_scale=(0.08, 1.0), hflip=0.5, color_jitter=(0.8, 0.8, 0.8, 0.2), grayscale_p=0.2, blur_p=0.5,
                  blur_min_size=0)
BYOL_2 = ViewSpec(crop_scale=(0.08, 1.0), hflip=0.5, color_jitter=(0.4, 0.4, 0.2, 0.1), grayscale_p=0.2, blur_p=0.5,
                  solarize_p=0.5, blur_min_size=0)
SPECS = [SIMCLR, BYOL_2, ViewSpec(crop_scale=(0.2, 1.0), hflip=0.5), ViewSpec(),  # MAE's; evaluation's centre crop
         ViewSpec(color_jitter=(0.4, 0.0, 0.0, 0.0), color_jitter_p=1.0, hflip=1.0, crop_scale=(0.9, 1.0))]
# (channels, source height, width, view size): up- and downsampling (up to 3 x 3 samples a pixel), non-square
SHAPES = [(3, 32, 32, 32), (1, 28, 28, 28), (3, 96, 72, 24), (3, 20, 30, 64), (1, 64, 64, 20)]


def images(channels: int, height: int, width: int, n: int = 24, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (n, channels, height, width), dtype=torch.uint8,
                         generator=torch.Generator().manual_seed(seed))


def keys(n: int = 24) -> torch.Tensor:
    return torch.arange(n) * 7919 + 13


@needs_kernel
@pytest.mark.parametrize("spec", SPECS)
@pytest.mark.parametrize("shape", SHAPES)
def test_kernel_views_equal_the_tensor_routes(spec, shape):
    channels, height, width, size = shape
    x, k = images(channels, height, width), keys()
    u = A.draws(k, 1)
    assert cpu_views.usable(x)
    kernel = A.augment(x, k, spec, 1, size)
    tensors = A.augment_with_tensors(x, spec, u, size)
    assert kernel.dtype == torch.float32 and kernel.shape == (24, channels, size, size)
    torch.testing.assert_close(kernel, tensors, atol=2e-5, rtol=0)
    assert not torch.equal(kernel[0], kernel[1])  # a real view, not the input or zeros


@needs_kernel
def test_kernel_finishes_cropped_views_and_rounds_to_uint8_as_the_tensor_route():
    """crop=False: the workers cropped (image folders); colour=False: the crop alone; uint8: what workers hand over."""
    x, k = images(3, 40, 40), keys()
    u = A.draws(k, 0)
    torch.testing.assert_close(A.augment(x, k, SIMCLR, 0, 40, crop=False),
                               A.augment_with_tensors(x, SIMCLR, u, 40, crop=False), atol=2e-5, rtol=0)
    torch.testing.assert_close(A.augment(x, k, SIMCLR, 0, 16, colour=False),
                               A.augment_with_tensors(x, SIMCLR, u, 16, colour=False), atol=2e-5, rtol=0)
    as_uint8 = A.augment(x, k, BYOL_2, 0, 24, uint8=True)
    reference = A.to_uint8(A.augment_with_tensors(x, BYOL_2, A.draws(k, 0), 24))
    assert as_uint8.dtype == torch.uint8
    assert (as_uint8.int() - reference.int()).abs().max() <= 1  # a rounding tie apart at most
    assert (as_uint8 == reference).float().mean() > 0.999
    with pytest.raises(ValueError, match="uncropped views need images of 32 x 32 px, got 40 x 40"):
        A.augment(x, k, SIMCLR, 0, 32, crop=False)  # the kernel would read past each image


@needs_kernel
def test_kernel_views_do_not_depend_on_the_thread_count():
    x, k = images(3, 64, 64, n=37), keys(37)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = A.augment(x, k, SIMCLR, 0, 48)
        torch.set_num_threads(3)
        several = A.augment(x, k, SIMCLR, 0, 48)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one, several)


@needs_kernel
def test_data_workers_make_the_views_the_main_process_makes():
    """Forked data workers (one torch thread each) run the kernel after the parent ran it on several threads."""
    if "fork" not in multiprocessing.get_all_start_methods():
        pytest.skip("no fork on this platform")
    views = [{"key": "view1", "crop_scale": [0.08, 1.0], "hflip": 0.5, "color_jitter": [0.4, 0.4, 0.4, 0.1],
              "grayscale_p": 0.2}]
    batches = []
    for workers in (0, 2):
        dm = Synthetic(num_samples=32, num_workers=workers, batch_size=8, views=views, augment_on="cpu")
        dm.setup()
        batches.append([batch["view1"] for batch in dm.train_dataloader()])
    assert all(torch.equal(a, b) for a, b in zip(*batches))


def test_without_a_compiler_the_tensor_route_runs_with_a_warning(monkeypatch, tmp_path):
    monkeypatch.setenv("SELFSUP_CACHE", str(tmp_path))
    monkeypatch.setenv("CC", "/bin/false")
    cpu_views.library.cache_clear()
    try:
        with pytest.warns(UserWarning, match="could not build selfsup's CPU augmentation kernel"):
            assert cpu_views.library() is None
        assert not list(tmp_path.rglob("*.so*"))  # a failed build leaves nothing behind
        x, k = images(3, 32, 32, n=4), keys(4)
        torch.testing.assert_close(A.augment(x, k, SIMCLR, 0, 32), A.augment_with_tensors(x, SIMCLR, A.draws(k, 0), 32))
        monkeypatch.setenv("SELFSUP_CPU_KERNEL", "0")
        cpu_views.library.cache_clear()
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # turned off on purpose: no warning
            assert cpu_views.library() is None
    finally:
        cpu_views.library.cache_clear()
