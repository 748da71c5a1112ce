"""Batched, per-sample image augmentation keyed by sample: one implementation for the CPU and the GPU.

Every random choice of a view (crop box, flip, colour-jitter factors and order, grayscale, blur sigma,
solarize) is a pure function of the sample's key and the view's number (keyed_random), and every operation
works on a batch with one parameter set per sample. The CPU path (data workers) runs it on a batch of one
image; the GPU path (`data.augment_on=gpu`) runs it on the whole uint8 batch after transfer. Both therefore
draw the same parameters from the same distributions, and produce the same view of a sample up to the
CPU path's rounding to uint8.

The parameter distributions are torchvision's: RandomResizedCrop (10 tries, then a centre crop),
RandomHorizontalFlip, RandomApply(ColorJitter) with a random order of its four operations, RandomGrayscale,
GaussianBlur (kernel 10% of the image, sigma uniform) and RandomSolarize (threshold 0.5).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any

import torch
import torch.nn.functional as F
from torchvision.ops import roi_align

from selfsup import keyed_random
from selfsup.data import cpu_views
from selfsup.errors import ConfigError

CROP_TRIES = 10
# Layout of each sample's uniform numbers: 4 per crop try, then the flip and the photometric draws.
_CROP, _FLIP = 0, 4 * CROP_TRIES
_JITTER_ON, _JITTER_FACTORS, _JITTER_ORDER = _FLIP + 1, _FLIP + 2, _FLIP + 6
_GRAY, _BLUR_ON, _BLUR_SIGMA, _SOLARIZE = _FLIP + 10, _FLIP + 11, _FLIP + 12, _FLIP + 13
NUM_UNIFORMS = _FLIP + 14
GRAY_WEIGHTS = (0.2989, 0.587, 0.114)  # ITU-R 601-2 luma, as torchvision and PIL


@dataclass(frozen=True)
class ViewSpec:
    """One view an objective asks for (an entry of its config's `views:` list)."""

    key: str = "image"
    size: int | None = None  # the view's side in pixels (multi-crop: small local views); None: the data's image_size
    # (a fraction of the image size in a config is made pixels by resolve_view_sizes before the data is built)
    crop_scale: tuple[float, float] | None = None  # random resized crop; None: resize and centre crop
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    hflip: float = 0.0
    color_jitter: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0)  # brightness, contrast, saturation, hue
    color_jitter_p: float = 0.8
    grayscale_p: float = 0.0
    blur_p: float = 0.0
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    blur_min_size: int = 96  # SimCLR blurs ImageNet-size images only; no blur below this size
    solarize_p: float = 0.0

    @classmethod
    def parse(cls, spec: dict[str, Any]) -> "ViewSpec":
        known = {f.name for f in fields(cls)}
        unknown = set(spec) - known
        if unknown:
            raise ConfigError(f"unknown view options {sorted(unknown)} in objective.views; known: {sorted(known)}")
        values = {k: tuple(v) if isinstance(v, (list, tuple)) else v for k, v in spec.items()}
        view = cls(**values)
        if view.size is not None and (not isinstance(view.size, int) or view.size < 1):
            raise ConfigError(f"objective.views size must be a whole number of pixels of at least 1 or a fraction of "
                              f"data.image_size in (0, 1), got {view.size}")
        if view.crop_scale is not None and not 0 < view.crop_scale[0] <= view.crop_scale[1] <= 1:
            raise ConfigError(f"objective.views crop_scale must satisfy 0 < low <= high <= 1, got {view.crop_scale}")
        return view


def resolve_view_sizes(views: list[dict[str, Any]], image_size: int | None, multiple: int = 1) -> None:
    """Make each view's `size` whole pixels that the backbone takes, in place, before the data module is built.

    A fraction in (0, 1) is a share of `image_size`, rounded to the nearest multiple of `multiple` (a ViT's patch):
    DINO's local crops, 96 of 224 px, are `size: 0.43`, which gives 96 px at 224 / patch 16, 98 px at patch 14,
    12 px at 28 / patch 4 and 14 px at 28 / patch 7. A size in pixels must already be such a multiple."""
    for view in views:
        size = view.get("size")
        if size is None or isinstance(size, bool):
            continue
        key = f"objective.views {view.get('key', '?')} size"
        if isinstance(size, float) and 0 < size < 1:
            if image_size is None:
                raise ConfigError(f"{key} {size} is a fraction of the image size, and the data has none; give pixels")
            view["size"] = max(multiple, multiple * round(size * image_size / multiple))
        elif isinstance(size, int) and size >= 1 and size % multiple:
            raise ConfigError(f"{key} {size} px does not divide into the backbone's {multiple} px patches; give a "
                              f"multiple of {multiple}, or a fraction of data.image_size (e.g. 0.43), rounded to one")


def draws(keys: torch.Tensor, view_number: int) -> torch.Tensor:
    """Each sample's NUM_UNIFORMS numbers in [0, 1) for one view."""
    return keyed_random.uniform(keys, NUM_UNIFORMS, stream=keyed_random.VIEW_STREAM + view_number)


# -- geometry ------------------------------------------------------------------------------------------------
def crop_boxes(spec: ViewSpec, u: torch.Tensor, height: torch.Tensor, width: torch.Tensor) -> torch.Tensor:
    """(B, 4) integer boxes (top, left, h, w) as torchvision's RandomResizedCrop.get_params draws them."""
    height, width = height.to(u).unsqueeze(1), width.to(u).unsqueeze(1)
    if spec.crop_scale is None:  # Resize(shorter side) + CenterCrop: the centred square
        side = torch.minimum(height, width)
        return torch.cat([((height - side) / 2).floor(), ((width - side) / 2).floor(), side, side], 1)
    tries = u[:, _CROP:_FLIP].view(-1, CROP_TRIES, 4)
    lo, hi = spec.crop_scale
    log_lo, log_hi = math.log(spec.crop_ratio[0]), math.log(spec.crop_ratio[1])
    area = height * width * (lo + (hi - lo) * tries[..., 0])
    aspect = torch.exp(log_lo + (log_hi - log_lo) * tries[..., 1])
    w = torch.round(torch.sqrt(area * aspect))
    h = torch.round(torch.sqrt(area / aspect))
    ok = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    top = torch.floor(tries[..., 2] * (height - h + 1))
    left = torch.floor(tries[..., 3] * (width - w + 1))
    first = torch.argmax(ok.to(torch.uint8), dim=1, keepdim=True)  # the first successful try
    pick = lambda t: torch.gather(t, 1, first)  # noqa: E731
    # Fallback when all tries fail: the centre crop with the aspect ratio clamped to crop_ratio.
    ratio = width / height
    fw = torch.where(ratio < spec.crop_ratio[0], width, torch.where(ratio > spec.crop_ratio[1],
                                                                    torch.round(height * spec.crop_ratio[1]), width))
    fh = torch.where(ratio < spec.crop_ratio[0], torch.round(width / spec.crop_ratio[0]), height)
    fallback = torch.cat([torch.div(height - fh, 2, rounding_mode="floor"),
                          torch.div(width - fw, 2, rounding_mode="floor"), fh, fw], 1)
    chosen = torch.cat([pick(top), pick(left), pick(h), pick(w)], 1)
    return torch.where(ok.any(1, keepdim=True), chosen, fallback)


def crop_resize(images: torch.Tensor, boxes: torch.Tensor, size: int) -> torch.Tensor:
    """Crop each image (float, B x C x H x W) to its box and resize to size x size in one kernel.

    roi_align samples bilinearly and averages ceil(box / size) points per output pixel, so it interpolates
    when enlarging and area-averages (no aliasing) when shrinking.
    """
    top, left, h, w = boxes.unbind(1)
    index = torch.arange(len(images), device=images.device, dtype=images.dtype)
    rois = torch.stack([index, left, top, left + w, top + h], 1).to(images.dtype)
    return roi_align(images, rois, output_size=size, spatial_scale=1.0, sampling_ratio=-1, aligned=True)


def image_boxes(spec: ViewSpec, u: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    """crop_boxes for a batch of images of one size (B, C, H, W)."""
    b, _, height, width = images.shape
    full = torch.full((b,), float(height), device=images.device), torch.full((b,), float(width), device=images.device)
    return crop_boxes(spec, u, *full)


def geometric(images: torch.Tensor, spec: ViewSpec, u: torch.Tensor, size: int) -> torch.Tensor:
    """Random resized crop (or resize + centre crop) and horizontal flip, per sample. Eager, only the samples
    drawn for the flip are flipped (gathered); compiled, every sample is selected (static shapes)."""
    out = crop_resize(images, image_boxes(spec, u, images), size)
    if spec.hflip > 0:
        flip = u[:, _FLIP] < spec.hflip
        if torch.compiler.is_compiling():
            return torch.where(flip.view(-1, 1, 1, 1), out.flip(-1), out)
        rows = flip.nonzero().squeeze(1)
        out.index_copy_(0, rows, out[rows].flip(-1))
    return out


# -- photometry (images in [0, 1]) -----------------------------------------------------------------------------
def to_gray(x: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) -> (B, 1, H, W) luma; one-channel images are returned as they are. One matrix product over
    the channels (a single pass, where per-channel products and sums take five)."""
    if x.shape[1] == 1:
        return x
    b, c, height, width = x.shape
    weights = torch.tensor([GRAY_WEIGHTS], device=x.device, dtype=x.dtype)
    return torch.matmul(weights, x.reshape(b, c, height * width)).view(b, 1, height, width)


HUE_CHANNEL_OFFSETS = (5.0, 3.0, 1.0)  # R, G, B in the compact HSV -> RGB formula below


def hue_sextant(x: torch.Tensor, chroma: torch.Tensor, maxc: torch.Tensor) -> torch.Tensor:
    """HSV's hue in sextants, (B, H, W) in [-1, 5) (0 where the pixel is grey), by torchvision's case rule:
    (g - b) / C where red is the maximum, 2 + (b - r) / C where green is, else 4 + (r - g) / C."""
    r, g, b = x.unbind(1)
    inverse = torch.where(chroma > 0, chroma, 1.0).reciprocal_()
    numerator = torch.where(maxc == r, g - b, torch.where(maxc == g, (b - r).add_(chroma, alpha=2.0),
                                                          (r - g).add_(chroma, alpha=4.0)))
    return numerator.mul_(inverse)


def hue_shift(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Rotate HSV's hue by `shift` turns (B, 1, 1, 1), keeping saturation and value, as torchvision's adjust_hue.

    Hand-written rather than an RGB -> HSV -> RGB round trip: with V = max, C = max - min and hue h in sextants,
    each channel is V - C * clamp(2 - |k - 2|, 0, 1) with k = (n + h) mod 6, n = 5, 3, 1 for R, G, B (the
    compact form of the sextant table). The three-channel passes run in place: on the CPU a pass that
    allocates its output costs several times one that does not."""
    maxc = x.amax(1)
    chroma = x.amin(1).neg_().add_(maxc)
    h = hue_sextant(x, chroma, maxc).unsqueeze(1).add_(6.0 * shift)
    offsets = torch.tensor(HUE_CHANNEL_OFFSETS, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    k = torch.remainder(h + offsets, 6.0)
    ramp = k.sub_(2.0).abs_().neg_().add_(2.0).clamp_(0, 1)
    return ramp.mul_(chroma.unsqueeze(1)).neg_().add_(maxc.unsqueeze(1))


def grey_blend(x: torch.Tensor, keep: torch.Tensor, towards_gray: torch.Tensor,
               towards_mean: torch.Tensor) -> torch.Tensor:
    """clamp(keep x + towards_gray gray(x) + towards_mean mean(gray(x))), per-sample weights (B, 1, 1, 1), in
    place (`x` is returned).

    Brightness (f, 0, 0), contrast (f, 0, 1 - f) and saturation (f, 1 - f, 0) are all this blend, and (1, 0, 0)
    leaves the image as it is: so one pass does whichever of the three each sample has at one position of its
    order. In place, because on the CPU a pass that allocates its output costs several times one that does not."""
    gray = to_gray(x)
    grey_part = torch.addcmul(towards_mean * gray.mean(dim=(1, 2, 3), keepdim=True), towards_gray, gray)
    return x.mul_(keep).add_(grey_part).clamp_(0, 1)


@dataclass
class JitterPlan:
    """Each sample's colour jitter, by position of its order: the grey_blend weights (B, 4) that the operation at
    each position takes (brightness (f, 0, 0), contrast (f, 0, 1 - f), saturation (f, 1 - f, 0), hue (1, 0, 0)),
    the hue's position (`hue_here`, B x 4) and the hue shift (B,). Gathered from per-operation tables by the
    order in one step per weight, instead of a selection per position and operation."""

    keep: torch.Tensor
    towards_gray: torch.Tensor
    towards_mean: torch.Tensor
    hue_here: torch.Tensor
    shift: torch.Tensor
    linear: bool  # any of brightness, contrast, saturation
    hue: bool

    def rows(self, index: torch.Tensor) -> "JitterPlan":
        return JitterPlan(self.keep[index], self.towards_gray[index], self.towards_mean[index], self.hue_here[index],
                          self.shift[index], self.linear, self.hue)


def jitter_plan(factors: list[torch.Tensor], order: torch.Tensor, ops: list[int]) -> JitterPlan:
    """The plan of `ops` (the operations that run; the others are neutral) in each sample's `order` (B, 4)."""
    one, zero = torch.ones_like(factors[0]), torch.zeros_like(factors[0])
    keep = torch.stack([factors[op] if op in ops else one for op in range(3)] + [one], 1)
    towards_gray = torch.stack([zero, zero, 1 - factors[2] if 2 in ops else zero, zero], 1)
    towards_mean = torch.stack([zero, 1 - factors[1] if 1 in ops else zero, zero, zero], 1)
    return JitterPlan(keep.gather(1, order), towards_gray.gather(1, order), towards_mean.gather(1, order), order == 3,
                      factors[3], linear=any(op < 3 for op in ops), hue=3 in ops)


def jitter_order(x: torch.Tensor, plan: JitterPlan, subsets: bool) -> torch.Tensor:
    """Every sample of `x` jittered by its plan, in its own order.

    At each of the four positions, one grey_blend pass applies whichever of brightness, contrast and saturation
    each sample has there, and one hue pass the samples whose hue is there. `subsets`: the hue pass runs on those
    samples only, gathered (about one hue pass per view in all, but shapes that depend on the draws); else on
    the whole batch, kept where drawn (static shapes, for torch.compile)."""
    shift = plan.shift.view(-1, 1, 1, 1)
    for position in range(4):
        if plan.linear:
            weights = (w[:, position].view(-1, 1, 1, 1) for w in (plan.keep, plan.towards_gray, plan.towards_mean))
            x = grey_blend(x, *weights)
        if not plan.hue:
            continue
        here = plan.hue_here[:, position]
        if subsets:  # x is this function's own tensor here (a blend's output, or the gathered samples)
            rows = here.nonzero().squeeze(1)
            if len(rows):
                x.index_copy_(0, rows, hue_shift(x[rows], shift[rows]))
        else:
            x = torch.where(here.view(-1, 1, 1, 1), hue_shift(x, shift), x)
    return x


def jitter_draws(spec: ViewSpec, u: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor]:
    """Which samples RandomApply(ColorJitter, p) jitters (B,), their four factors (brightness, contrast,
    saturation, hue; B each) and each sample's order of the four operations (B, 4)."""
    apply = u[:, _JITTER_ON] < spec.color_jitter_p
    raw = u[:, _JITTER_FACTORS:_JITTER_FACTORS + 4]
    factors = [1 - s + 2 * s * raw[:, i] if i < 3 else (2 * raw[:, i] - 1) * s for i, s in enumerate(spec.color_jitter)]
    order = torch.argsort(u[:, _JITTER_ORDER:_JITTER_ORDER + 4], dim=1)  # a uniform random permutation
    return apply, factors, order


def jitter_ops(spec: ViewSpec, channels: int) -> list[int]:
    """The jitter operations that run: those of non-zero strength; brightness and contrast only on grey images."""
    return [op for op, s in enumerate(spec.color_jitter) if s > 0 and (op < 2 or channels == 3)]


def color_jitter(x: torch.Tensor, spec: ViewSpec, u: torch.Tensor) -> torch.Tensor:
    """RandomApply(ColorJitter, p): each applied sample gets its four factors and its own order of the four ops.

    Eager, only the samples drawn for jitter are jittered (gathered, then put back into `x`, which this
    changes); compiled, every sample goes through with neutral factors where jitter is not drawn, which keeps
    shapes static (one graph, no host sync)."""
    apply, factors, order = jitter_draws(spec, u)
    ops = jitter_ops(spec, x.shape[1])
    if torch.compiler.is_compiling():
        neutral = [torch.where(apply, f, 1.0 if op < 3 else 0.0) for op, f in enumerate(factors)]
        return jitter_order(x, jitter_plan(neutral, order, ops), subsets=False)
    rows = apply.nonzero().squeeze(1)
    plan = jitter_plan(factors, order, ops).rows(rows)
    return x.index_copy_(0, rows, jitter_order(x[rows], plan, subsets=True))


def grayscale(x: torch.Tensor, spec: ViewSpec, u: torch.Tensor) -> torch.Tensor:
    """RandomGrayscale: the drawn samples become their luma in every channel (eager: those samples only)."""
    gray = u[:, _GRAY] < spec.grayscale_p
    if torch.compiler.is_compiling():
        return torch.where(gray.view(-1, 1, 1, 1), to_gray(x).expand_as(x), x)
    rows = gray.nonzero().squeeze(1)
    return x.index_copy_(0, rows, to_gray(x[rows]).expand(-1, x.shape[1], -1, -1))


def blur_with(x: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """Separable blur of each image (B, C, H, W) with its own 1-D kernel (B, k), reflect-padded: a grouped
    convolution over all images' channels at once, one pass per axis."""
    b, c, height, width = x.shape
    k = kernel.shape[1]
    kernel = kernel.repeat_interleave(c, 0).view(b * c, 1, 1, k)
    flat = F.pad(x.reshape(1, b * c, height, width), (k // 2, k // 2, k // 2, k // 2), mode="reflect")
    flat = F.conv2d(flat, kernel, groups=b * c)
    flat = F.conv2d(flat, kernel.transpose(2, 3), groups=b * c)
    return flat.view(b, c, height, width)


def blur_kernel_size(size: int) -> int:
    """GaussianBlur's kernel side: 10% of the image, odd (23 at 224 px, 9 at 96 px, 3 at 32 px)."""
    return int(0.1 * size) // 2 * 2 + 1


def blur_draws(spec: ViewSpec, u: torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Which samples are blurred (B,) and each sample's normalised 1-D Gaussian (B, k), sigma uniform."""
    k = blur_kernel_size(size)
    lo, hi = spec.blur_sigma
    sigma = (lo + (hi - lo) * u[:, _BLUR_SIGMA]).view(-1, 1)
    offsets = torch.arange(k, device=u.device, dtype=u.dtype) - k // 2
    kernel = torch.exp(-(offsets**2) / (2 * sigma**2))
    return u[:, _BLUR_ON] < spec.blur_p, kernel / kernel.sum(1, keepdim=True)


def blurs(spec: ViewSpec, size: int) -> bool:
    return spec.blur_p > 0 and size >= spec.blur_min_size


def grays(spec: ViewSpec, channels: int) -> bool:
    return spec.grayscale_p > 0 and channels == 3


def gaussian_blur(x: torch.Tensor, spec: ViewSpec, u: torch.Tensor) -> torch.Tensor:
    """Gaussian blur with a per-sample sigma. Eager, only the samples drawn for blur are blurred (gathered, put
    back into `x`); compiled, the others get a unit kernel (identity), which keeps shapes static."""
    blurred, kernel = blur_draws(spec, u.to(x.dtype), x.shape[2])
    if torch.compiler.is_compiling():
        identity = (torch.arange(kernel.shape[1], device=x.device) == kernel.shape[1] // 2).to(x.dtype)
        return blur_with(x, torch.where(blurred.view(-1, 1), kernel, identity.expand_as(kernel)))
    rows = blurred.nonzero().squeeze(1)
    if len(rows) == 0:  # a convolution takes no empty batch
        return x
    return x.index_copy_(0, rows, blur_with(x[rows], kernel[rows]))


def photometric(x: torch.Tensor, spec: ViewSpec, u: torch.Tensor) -> torch.Tensor:
    """Colour jitter, grayscale, blur and solarize on float images in [0, 1], per sample. Eager, `x` is changed
    in place (each operation writes back only the samples drawn for it)."""
    if any(spec.color_jitter) and spec.color_jitter_p > 0:
        x = color_jitter(x, spec, u)
    if grays(spec, x.shape[1]):
        x = grayscale(x, spec, u)
    if blurs(spec, x.shape[-1]):
        x = gaussian_blur(x, spec, u)
    if spec.solarize_p > 0:
        solarize = (u[:, _SOLARIZE] < spec.solarize_p).view(-1, 1, 1, 1) & (x >= 0.5)
        x = torch.where(solarize, 1 - x, x)
    return x


def kernel_params(images: torch.Tensor, spec: ViewSpec, u: torch.Tensor, size: int, crop: bool,
                  colour: bool) -> tuple[torch.Tensor, list[int], torch.Tensor | None]:
    """Each sample's draws as cpu_views.c takes them: one row of floats per sample (B, NUM_PARAMS, in the order of
    cpu_views.COLUMNS), the jitter operations that run and the blur kernels (B, k), or None when no blur runs."""
    b, channels = images.shape[:2]
    columns = dict.fromkeys(cpu_views.COLUMNS, torch.zeros(b, 1))
    if crop:
        columns["box"] = image_boxes(spec, u, images)
        columns["flip"] = u[:, _FLIP:_FLIP + 1] < spec.hflip
    ops = jitter_ops(spec, channels) if colour else []
    if ops and spec.color_jitter_p > 0:
        apply, factors, order = jitter_draws(spec, u)
        columns.update(jitter=apply.unsqueeze(1), factors=torch.stack(factors, 1), order=order)
    kernels = None
    if colour:
        if grays(spec, channels):
            columns["gray"] = u[:, _GRAY:_GRAY + 1] < spec.grayscale_p
        if blurs(spec, size):
            blurred, kernels = blur_draws(spec, u, size)
            columns["blur"] = blurred.unsqueeze(1)
        columns["solarize"] = u[:, _SOLARIZE:_SOLARIZE + 1] < spec.solarize_p
    params = torch.cat([c.to(torch.float32).expand(b, cpu_views.COLUMNS[name]) for name, c in columns.items()], 1)
    return params, ops, kernels


def augment(images: torch.Tensor, keys: torch.Tensor, spec: ViewSpec, view_number: int, size: int,
            crop: bool = True, colour: bool = True, uint8: bool = False) -> torch.Tensor:
    """A batch of views, float in [0, 1] (uint8 with `uint8`): `images` uint8 (B, C, H, W); `crop=False` when
    already cropped (to size x size), `colour=False` for the crop alone. On the CPU, cpu_views.c makes them
    when it could be built; elsewhere (and compiled), tensor operations on the whole batch."""
    u = draws(keys.to(images.device), view_number)
    if cpu_views.usable(images):
        params, ops, kernels = kernel_params(images, spec, u, size, crop, colour)
        return cpu_views.make_views(images, params, crop, size, ops, kernels, uint8)
    views = augment_with_tensors(images, spec, u, size, crop, colour)
    return to_uint8(views) if uint8 else views


def augment_with_tensors(images: torch.Tensor, spec: ViewSpec, u: torch.Tensor, size: int, crop: bool = True,
                         colour: bool = True) -> torch.Tensor:
    """augment's route on any device: each operation one batched pass over the samples that drew it."""
    x = images.to(torch.float32, copy=True).div_(255.0)  # a tensor of its own: photometric() changes it in place
    if crop:
        x = geometric(x, spec, u, size)
    return photometric(x, spec, u) if colour else x


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    return (x * 255.0).round_().clamp_(0, 255).to(torch.uint8)


class CPUView:
    """A view made in a data worker from one (C, H, W) uint8 image: all stages, or the crop only
    (`stages="geometric"`, when the GPU does the rest but images differ in size and must be cropped to batch)."""

    def __init__(self, spec: ViewSpec, view_number: int, size: int, stages: str = "all") -> None:
        self.spec = spec
        self.view_number = view_number
        self.size = size
        self.stages = stages

    def __call__(self, image: torch.Tensor, key: int) -> torch.Tensor:
        keys = torch.tensor([key], dtype=torch.int64)
        return augment(image.unsqueeze(0), keys, self.spec, self.view_number, self.size, colour=self.stages == "all",
                       uint8=True)[0]
