"""ImageNet augmentation on the model's device: decode a batch of encoded images there and apply the DeiT / Swin
training recipe (RandomResizedCrop, flip, timm's RandAugment, random erasing) or the centre-crop evaluation.

The data loader's workers only read files (``PackEncodedImage``); ``BatchAugmentDataPreprocessor`` decodes the
batch (nvJPEG on CUDA, libjpeg on the CPU) and augments it where the model runs, so that a few CPU cores can feed a
fast GPU. The random choices follow timm's transforms in distribution (``RandomResizedCropAndInterpolation``,
``rand_augment_transform``, ``RandomErasing(mode='pixel')``) and the pixel operations follow PIL's, which timm
applies. Parameters are drawn on the host and the erasing noise on the device, from generators seeded with torch's
seed and the process's rank: a seeded run is reproducible, and the host does not wait for the device.
"""
from __future__ import annotations

import io
import math
import re
import warnings
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
import torchvision.transforms.v2.functional as TF
from mmengine.logging import print_log
from mmengine.model import BaseDataPreprocessor
from torchvision.io import ImageReadMode, decode_image, decode_jpeg

from ..registry import MODELS
from .classification import samples_to_device
from .prefetch import PreparedBatch

__all__ = ['BatchAugmentDataPreprocessor', 'BatchRandAugment', 'decode_images', 'random_resized_crop_params',
           'resized_crops', 'resize_center_crop', 'random_erasing', 'RAND_AUGMENT_OPS']

IMAGENET_MEAN = (123.675, 116.28, 103.53)
IMAGENET_STD = (58.395, 57.12, 57.375)
_JPEG_MAGIC = (0xFF, 0xD8, 0xFF)


def _to_uint8(x: torch.Tensor) -> torch.Tensor:
    return x.round_().clamp_(0, 255).to(torch.uint8)


def _to(x: torch.Tensor, device: torch.device, dtype: Optional[torch.dtype] = None) -> torch.Tensor:
    # Parameters drawn on the host go to the device without a blocking copy, which would wait for the device's
    # queue to drain: the host keeps launching while the device works.
    return x.to(device=device, dtype=dtype, non_blocking=True)


# ---------------------------------------------------------------------------------------------------------- decoding

def _is_jpeg(data: torch.Tensor) -> bool:
    return len(data) >= 3 and tuple(data[:3].tolist()) == _JPEG_MAGIC


def _decode_one(data: torch.Tensor, device: torch.device) -> Optional[torch.Tensor]:
    """One image as RGB ``uint8`` (3, H, W) on ``device``, through whichever decoder reads it; None if none does."""
    if device.type == 'cuda' and _is_jpeg(data):
        try:
            return decode_jpeg(data, mode=ImageReadMode.RGB, device=device)
        except RuntimeError:  # nvJPEG does not read every JPEG (CMYK, some progressive files)
            pass
    try:  # libjpeg (grayscale and CMYK to RGB), libpng, ...
        return _to(decode_image(data, mode=ImageReadMode.RGB), device)
    except RuntimeError:
        pass
    try:  # formats torchvision does not read: BMP, TIFF, PPM
        from PIL import Image
        with Image.open(io.BytesIO(data.numpy().tobytes())) as image:
            rgb = np.array(image.convert('RGB'))
        return _to(torch.from_numpy(rgb).permute(2, 0, 1).contiguous(), device)
    except (OSError, SyntaxError, ValueError):  # PIL's "cannot identify image file" is an OSError
        return None


def decode_images(encoded: Sequence[torch.Tensor], device: torch.device) -> List[Optional[torch.Tensor]]:
    """Encoded files (1-D ``uint8`` CPU tensors) as RGB ``uint8`` (3, H, W) images on ``device``.

    JPEGs are decoded as one batch (nvJPEG's batched decoder on CUDA); other formats, and every JPEG of a batch that
    a decoder refused, one by one. Files no decoder reads are None.
    """
    device = torch.device(device)
    images: List[Optional[torch.Tensor]] = [None] * len(encoded)
    if device.type == 'cuda':
        # torchvision's nvJPEG decoder writes its outputs from its own stream without waiting for the current one:
        # a block just freed by kernels still queued there could be overwritten under them, so the stream drains
        # first. In a plain training loop that is a host wait for the previous step's GPU work; under
        # PrefetchEpochBasedTrainLoop the stream is the prefetch thread's own, where only the previous batch's
        # preprocessing was queued.
        torch.cuda.current_stream(device).synchronize()
    with warnings.catch_warnings():  # torchvision 0.29 marks its decoders deprecated, once per call
        warnings.simplefilter('ignore', DeprecationWarning)
        jpegs = [i for i, data in enumerate(encoded) if _is_jpeg(data)]
        if jpegs:
            try:
                decoded = decode_jpeg([encoded[i] for i in jpegs], mode=ImageReadMode.RGB, device=device)
                for i, image in zip(jpegs, decoded):
                    images[i] = image
            except RuntimeError:  # one file the batched decoder refuses fails the batch: decode one by one
                pass
        for i, image in enumerate(images):
            if image is None:
                images[i] = _decode_one(encoded[i], device)
    return images


# ------------------------------------------------------------------------------------------------ crops and resizing

def random_resized_crop_params(sizes: torch.Tensor, scale: Tuple[float, float] = (0.08, 1.0),
                               ratio: Tuple[float, float] = (3 / 4, 4 / 3), attempts: int = 10,
                               generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """(top, left, height, width) of a random crop per image, as torchvision's and timm's RandomResizedCrop draw it.

    ``sizes`` is (N, 2) heights and widths. Each image takes the first of ``attempts`` candidates (area a uniform
    fraction in ``scale`` of the image's, log-uniform aspect ratio in ``ratio``) that fits, else the centre crop
    of the image clamped to ``ratio``. Returns (N, 4) int64. Drawn from ``generator`` (default: torch's).
    """
    g = generator
    sizes = sizes.to(torch.float64)
    n = len(sizes)
    height, width = sizes[:, :1], sizes[:, 1:]
    area = (height * width) * torch.empty(n, attempts, dtype=torch.float64).uniform_(*scale, generator=g)
    log_ratio = math.log(ratio[0]), math.log(ratio[1])
    aspect = torch.exp(torch.empty(n, attempts, dtype=torch.float64).uniform_(*log_ratio, generator=g))
    w = torch.sqrt(area * aspect).round()
    h = torch.sqrt(area / aspect).round()
    fits = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = fits.to(torch.uint8).argmax(dim=1, keepdim=True)  # the first candidate that fits
    h, w = h.gather(1, first).squeeze(1), w.gather(1, first).squeeze(1)
    height, width = height.squeeze(1), width.squeeze(1)
    top = torch.floor(torch.rand(n, dtype=torch.float64, generator=g) * (height - h + 1))
    left = torch.floor(torch.rand(n, dtype=torch.float64, generator=g) * (width - w + 1))

    # no candidate fits: the whole image, cut to the nearest aspect ratio in range, centred
    in_ratio = width / height
    fallback_w = torch.where(in_ratio > ratio[1], (height * ratio[1]).round(), width)
    fallback_h = torch.where(in_ratio < ratio[0], (width / ratio[0]).round(), height)
    fallback = ~fits.any(dim=1)
    h, w = torch.where(fallback, fallback_h, h), torch.where(fallback, fallback_w, w)
    top = torch.where(fallback, torch.div(height - h, 2, rounding_mode='floor'), top)
    left = torch.where(fallback, torch.div(width - w, 2, rounding_mode='floor'), left)
    return torch.stack([top, left, h, w], dim=1).long()


def resized_crops(images: Sequence[torch.Tensor], boxes: torch.Tensor, size: int) -> torch.Tensor:
    """Each image's (top, left, height, width) box resized to ``size``² (bicubic, antialiased as PIL's resize):
    ``uint8`` (N, 3, size, size)."""
    crops = [F.interpolate(image[None, :, t:t + h, l:l + w].float(), size=(size, size), mode='bicubic',
                           align_corners=False, antialias=True)
             for image, (t, l, h, w) in zip(images, boxes.tolist())]
    return _to_uint8(torch.cat(crops))


def resize_center_crop(images: Sequence[torch.Tensor], resize: int, size: int) -> torch.Tensor:
    """The evaluation view: shorter side to ``resize`` (bicubic, antialiased), the central ``size``² square."""
    out = []
    for image in images:
        h, w = image.shape[-2:]
        new_h, new_w = (resize, int(resize * w / h)) if h <= w else (int(resize * h / w), resize)
        resized = F.interpolate(image[None].float(), size=(new_h, new_w), mode='bicubic', align_corners=False,
                                antialias=True)
        top, left = (new_h - size) // 2, (new_w - size) // 2
        out.append(resized[:, :, top:top + size, left:left + size])
    return _to_uint8(torch.cat(out))


# ------------------------------------------------------------------------------------------------------ RandAugment
# Each op is (level -> argument, operation). ``level`` is the magnitude over timm's denominator 10 and ``sign`` is
# +-1, timm's random negation; the mapping functions are timm's ``LEVEL_TO_ARG``, vectorised. The operations take a
# uint8 batch (n, 3, H, W) and one argument per image, and do what PIL does (truncating blends, rounded filters).

def _pil_gray(images: torch.Tensor) -> torch.Tensor:
    """PIL's ``convert('L')``: (299 R + 587 G + 114 B) / 1000 in 16-bit fixed point, rounded."""
    x = images.int()
    return (x[:, :1] * 19595 + x[:, 1:2] * 38470 + x[:, 2:] * 7471 + 32768) >> 16


def _blend(degenerate: torch.Tensor, images: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """PIL's ``Image.blend(degenerate, image, factor)``: extrapolates for factor > 1, truncates to uint8."""
    degenerate = degenerate.float()
    out = degenerate + factor.view(-1, 1, 1, 1) * (images.float() - degenerate)
    return out.clamp_(0, 255).to(torch.uint8)


def _autocontrast(images, _):
    # PIL's: each channel's range stretched to 0-255, truncated; a constant channel stays
    x = images.float()
    low, high = x.amin(dim=(-2, -1), keepdim=True), x.amax(dim=(-2, -1), keepdim=True)
    out = ((x - low) * (255 / (high - low).clamp_(min=1))).clamp_(0, 255).to(torch.uint8)
    return torch.where(high > low, out, images)


def _color(images, factor):
    return _blend(_pil_gray(images).expand_as(images), images, factor)


def _contrast(images, factor):
    mean = torch.floor(_pil_gray(images).float().mean(dim=(1, 2, 3)) + 0.5)
    return _blend(mean.view(-1, 1, 1, 1).expand_as(images), images, factor)


def _brightness(images, factor):
    return _blend(torch.zeros_like(images), images, factor)


def _sharpness(images, factor):
    # PIL's SMOOTH filter (centre 5, neighbours 1, over 13), rounded, the one-pixel border left as it is
    kernel = torch.ones(3, 1, 3, 3, device=images.device)
    kernel[:, :, 1, 1] = 5
    smooth = F.conv2d(images.float(), kernel / 13, groups=3).round_()
    degenerate = images.clone()
    degenerate[:, :, 1:-1, 1:-1] = smooth.to(torch.uint8)
    return _blend(degenerate, images, factor)


def _posterize(images, bits):
    # keep the ``bits`` high bits: 0 bits gives black, 8 the image
    mask = (255 - (2 ** (8 - bits.long()) - 1)).to(torch.uint8)
    return images & mask.view(-1, 1, 1, 1)


def _solarize(images, threshold):
    return torch.where(images >= threshold.view(-1, 1, 1, 1), 255 - images, images)


def _solarize_add(images, add):
    added = (images.int() + add.view(-1, 1, 1, 1).int()).clamp_(max=255).to(torch.uint8)
    return torch.where(images < 128, added, images)


def _no_arg(op):
    return lambda images, _: op(images)


def _signed(scale):
    return lambda level, sign: sign * level * scale


def _enhance(level, sign):  # factor in [0.1, 1.9]
    return level * 1.8 + 0.1


def _enhance_increasing(level, sign):  # away from 1 (no change) as the magnitude grows
    return (1.0 + sign * level * 0.9).clamp(min=0.1)


def _posterize_level(level, sign):
    return torch.floor(level * 4)


def _solarize_level(level, sign):
    return torch.floor(level * 256).clamp(max=256)


# Affine ops are marked None: they are gathered into one resampling (``_affine``) per layer.
RAND_AUGMENT_OPS = {
    'AutoContrast': (None, _autocontrast),
    'Equalize': (None, _no_arg(TF.equalize)),
    'Invert': (None, _no_arg(TF.invert)),
    'Rotate': (_signed(30.0), None),
    'Posterize': (_posterize_level, _posterize),
    'PosterizeIncreasing': (lambda level, sign: 4 - _posterize_level(level, sign), _posterize),
    'Solarize': (_solarize_level, _solarize),
    'SolarizeIncreasing': (lambda level, sign: 256 - _solarize_level(level, sign), _solarize),
    'SolarizeAdd': (lambda level, sign: torch.floor(level * 110).clamp(max=128), _solarize_add),
    'Color': (_enhance, _color),
    'ColorIncreasing': (_enhance_increasing, _color),
    'Contrast': (_enhance, _contrast),
    'ContrastIncreasing': (_enhance_increasing, _contrast),
    'Brightness': (_enhance, _brightness),
    'BrightnessIncreasing': (_enhance_increasing, _brightness),
    'Sharpness': (_enhance, _sharpness),
    'SharpnessIncreasing': (_enhance_increasing, _sharpness),
    'ShearX': (_signed(0.3), None),
    'ShearY': (_signed(0.3), None),
    'TranslateXRel': (_signed(0.45), None),
    'TranslateYRel': (_signed(0.45), None),
}
# timm's _RAND_TRANSFORMS and _RAND_INCREASING_TRANSFORMS (``inc1``), in its order
_RAND_TRANSFORMS = ('AutoContrast', 'Equalize', 'Invert', 'Rotate', 'Posterize', 'Solarize', 'SolarizeAdd', 'Color',
                    'Contrast', 'Brightness', 'Sharpness', 'ShearX', 'ShearY', 'TranslateXRel', 'TranslateYRel')
_RAND_INCREASING_TRANSFORMS = tuple(
    name + 'Increasing' if name in ('Posterize', 'Solarize', 'Color', 'Contrast', 'Brightness', 'Sharpness') else name
    for name in _RAND_TRANSFORMS)


def _affine_matrices(names: Sequence[str], args: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """PIL's ``Image.transform(AFFINE)`` data per image: (n, 2, 3) mapping output to input pixel coordinates (origin
    at the top-left corner of the image, pixel centres at +0.5), as timm's shear / translate / rotate build it."""
    m = torch.zeros(len(names), 2, 3, dtype=torch.float64)
    m[:, 0, 0] = m[:, 1, 1] = 1
    for i, (name, arg) in enumerate(zip(names, args.tolist())):
        if name == 'ShearX':
            m[i, 0, 1] = arg
        elif name == 'ShearY':
            m[i, 1, 0] = arg
        elif name == 'TranslateXRel':
            m[i, 0, 2] = arg * width
        elif name == 'TranslateYRel':
            m[i, 1, 2] = arg * height
        else:  # Rotate: counter-clockwise by ``arg`` degrees about the centre
            angle = -math.radians(arg)
            a = torch.tensor([[math.cos(angle), math.sin(angle)], [-math.sin(angle), math.cos(angle)]],
                             dtype=torch.float64)
            centre = torch.tensor([width / 2, height / 2], dtype=torch.float64)
            m[i, :, :2] = a
            m[i, :, 2] = centre - a @ centre
    return m


def _affine(images: torch.Tensor, matrices: torch.Tensor, bicubic: torch.Tensor, fill: torch.Tensor) -> torch.Tensor:
    """Resample each image through its (2, 3) ``matrices`` (output to input pixel coordinates): bilinear or, where
    ``bicubic``, bicubic; PIL's edges: samples near the border clamp to it, points outside the image take ``fill``."""
    n, _, height, width = images.shape
    # affine_grid maps [-1, 1] (pixel edges, align_corners=False) to [-1, 1]: conjugate by the pixel scale
    scale = torch.tensor([width / 2, height / 2], dtype=torch.float64)
    theta = torch.empty_like(matrices)
    theta[:, :, :2] = matrices[:, :, :2] * scale[None, None, :] / scale[None, :, None]
    theta[:, :, 2] = (matrices[:, :, :2] @ scale + matrices[:, :, 2]) / scale - 1
    grid = F.affine_grid(_to(theta, images.device, torch.float32), [n, 3, height, width], align_corners=False)
    source = images.float()
    out = torch.empty_like(source)
    for mode, chosen in (('bilinear', ~bicubic), ('bicubic', bicubic)):
        index = _to(chosen.nonzero().squeeze(1), images.device)
        if len(index):
            out[index] = F.grid_sample(source[index], grid[index], mode=mode, padding_mode='border',
                                       align_corners=False)
    outside = ((grid < -1) | (grid >= 1)).any(dim=-1, keepdim=True).permute(0, 3, 1, 2)
    out = torch.where(outside, _to(fill.view(1, 3, 1, 1), out.device, out.dtype), out)
    return _to_uint8(out)


class BatchRandAugment:
    """timm's RandAugment (``rand_augment_transform``) on a ``uint8`` batch (N, 3, H, W), per image.

    Args:
        config: timm's config string: ``rand`` then ``m`` (magnitude, 0-10), ``n`` (ops per image, default 2),
            ``p`` (probability of applying each op, default 0.5), ``mstd`` (std of a normal magnitude noise, > 100
            for uniform in [0, m]), ``mmax`` (upper clamp of the magnitude, default 10), ``inc`` (1: the op set
            whose strength increases with the magnitude); e.g. ``rand-m9-mstd0.5-inc1``.
        fill: RGB fill of the area that rotation, shear and translation bring in (timm: ``img_mean``).

    Each op is drawn uniformly with replacement, applied with probability ``p``, with a magnitude drawn per
    application and a random sign for the signed ops; rotate / shear / translate resample bilinear or bicubic at
    random, as timm's default ``interpolation``.
    """

    def __init__(self, config: str = 'rand-m9-mstd0.5-inc1', fill: Sequence[float] = (124, 116, 104)):
        self.config = config
        self.magnitude, self.num_layers, self.prob, self.magnitude_std, self.magnitude_max = 10.0, 2, 0.5, 0.0, 10.0
        increasing = False
        sections = config.split('-')
        if sections[0] != 'rand':
            raise ValueError(f"RandAugment config must start with 'rand', got {config!r}")
        for section in sections[1:]:
            match = re.fullmatch(r'(mstd|mmax|inc|m|n|p)(\d+(?:\.\d*)?)', section)
            if match is None:
                raise ValueError(f'RandAugment config {config!r}: unsupported section {section!r} (known: m, n, p, '
                                 'mstd, mmax, inc)')
            key, value = match.groups()
            if key == 'm':
                self.magnitude = float(int(value))
            elif key == 'n':
                self.num_layers = int(value)
            elif key == 'p':
                self.prob = float(value)
            elif key == 'mstd':
                self.magnitude_std = float(value) if float(value) <= 100 else math.inf
            elif key == 'mmax':
                self.magnitude_max = float(int(value))
            else:
                increasing = bool(int(value))
        self.ops = _RAND_INCREASING_TRANSFORMS if increasing else _RAND_TRANSFORMS
        self.fill = torch.tensor(fill, dtype=torch.float32)

    def sample(self, n: int, generator: Optional[torch.Generator] = None) -> Dict[str, torch.Tensor]:
        """One layer's choices for ``n`` images (CPU tensors): op index, applied, magnitude, sign, bicubic."""
        g = generator
        op = torch.randint(len(self.ops), (n,), generator=g)
        applied = torch.rand(n, generator=g) <= self.prob
        if math.isinf(self.magnitude_std):
            magnitude = torch.rand(n, dtype=torch.float64, generator=g) * self.magnitude
        elif self.magnitude_std > 0:
            magnitude = torch.normal(self.magnitude, self.magnitude_std, (n,), dtype=torch.float64, generator=g)
        else:
            magnitude = torch.full((n,), self.magnitude, dtype=torch.float64)
        sign = torch.where(torch.rand(n, generator=g) > 0.5, -1.0, 1.0).to(torch.float64)
        return dict(op=op, applied=applied, magnitude=magnitude.clamp(0, self.magnitude_max), sign=sign,
                    bicubic=torch.rand(n, generator=g) < 0.5)

    def apply(self, images: torch.Tensor, choice: Dict[str, torch.Tensor]) -> torch.Tensor:
        """One layer, in place: each image's chosen op, images grouped by op (affine ops in one resampling)."""
        level = choice['magnitude'] / 10.0
        affine = []
        for k, name in enumerate(self.ops):
            chosen = (choice['applied'] & (choice['op'] == k)).nonzero().squeeze(1)
            if not len(chosen):
                continue
            level_to_arg, op = RAND_AUGMENT_OPS[name]
            args = level_to_arg(level[chosen], choice['sign'][chosen]) if level_to_arg else None
            if op is None:
                affine += [(name, i, a) for i, a in zip(chosen.tolist(), args.tolist())]
                continue
            index = _to(chosen, images.device)
            args = _to(args, images.device, torch.float32) if args is not None else None
            images[index] = op(images[index], args)
        if affine:
            names, chosen, args = zip(*affine)
            chosen = torch.tensor(chosen)
            matrices = _affine_matrices(names, torch.tensor(args, dtype=torch.float64), *images.shape[-2:])
            index = _to(chosen, images.device)
            images[index] = _affine(images[index], matrices, choice['bicubic'][chosen], self.fill)
        return images

    def __call__(self, images: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f'expected a uint8 batch (N, 3, H, W), got {images.dtype} {tuple(images.shape)}')
        images = images.clone()
        for _ in range(self.num_layers):
            images = self.apply(images, self.sample(len(images), generator))
        return images

    def __repr__(self) -> str:
        return f'{type(self).__name__}({self.config!r})'


# -------------------------------------------------------------------------------------------------- random erasing

def random_erasing(images: torch.Tensor, prob: float = 0.25, scale: Tuple[float, float] = (0.02, 1 / 3),
                   min_aspect: float = 0.3, attempts: int = 10, generator: Optional[torch.Generator] = None,
                   noise_generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """timm's ``RandomErasing(mode='pixel')`` on a normalised float batch (N, C, H, W), in place: with probability
    ``prob`` one rectangle (area a uniform fraction in ``scale`` of the image's, log-uniform aspect ratio in
    [``min_aspect``, 1 / ``min_aspect``], the first of ``attempts`` that fits) becomes standard normal noise.
    Boxes are drawn from ``generator`` (a CPU one), the noise from ``noise_generator`` (one of the images' device);
    default: torch's."""
    g = generator
    n, _, height, width = images.shape
    erase = torch.rand(n, generator=g) <= prob
    area = torch.empty(n, attempts, dtype=torch.float64).uniform_(*scale, generator=g) * (height * width)
    log_aspect = math.log(min_aspect), -math.log(min_aspect)
    aspect = torch.exp(torch.empty(n, attempts, dtype=torch.float64).uniform_(*log_aspect, generator=g))
    h = torch.sqrt(area * aspect).round()
    w = torch.sqrt(area / aspect).round()
    fits = (w < width) & (h < height)
    first = fits.to(torch.uint8).argmax(dim=1, keepdim=True)
    h, w = h.gather(1, first).squeeze(1), w.gather(1, first).squeeze(1)
    top = torch.floor(torch.rand(n, dtype=torch.float64, generator=g) * (height - h + 1))
    left = torch.floor(torch.rand(n, dtype=torch.float64, generator=g) * (width - w + 1))
    chosen = (erase & fits.any(dim=1)).nonzero().squeeze(1)
    if not len(chosen):
        return images
    box = _to(torch.stack([top, top + h, left, left + w], dim=1)[chosen].long(), images.device)
    rows = torch.arange(height, device=images.device)
    cols = torch.arange(width, device=images.device)
    inside = (((rows >= box[:, :1]) & (rows < box[:, 1:2]))[:, :, None]
              & ((cols >= box[:, 2:3]) & (cols < box[:, 3:]))[:, None, :])
    index = _to(chosen, images.device)
    noise = torch.randn((len(chosen),) + images.shape[1:], dtype=images.dtype, device=images.device,
                        generator=noise_generator)
    images[index] = torch.where(inside[:, None], noise, images[index])
    return images


# ------------------------------------------------------------------------------------------------ data preprocessor

@MODELS.register_module()
class BatchAugmentDataPreprocessor(BaseDataPreprocessor):
    """Decode and augment a batch of encoded images on the model's device, then normalise.

    The pipeline ends with ``PackEncodedImage``, so ``inputs`` is a list of 1-D ``uint8`` tensors (the files'
    bytes). Training batches get timm's ImageNet recipe: RandomResizedCrop to ``img_size`` (bicubic,
    antialiased), horizontal flip, RandAugment, normalisation, random erasing; evaluation batches the resize of the
    shorter side to ``int(img_size / crop_pct)`` (bicubic, antialiased) and the central ``img_size`` crop. A file
    that no decoder reads is logged and replaced by another image of the batch (with its label), so that the batch
    keeps its size.

    The random draws come from generators seeded at the first batch with torch's seed (mmengine's
    ``randomness.seed``) and the process's rank: a seeded run is reproducible, and each process of a distributed run
    augments its images differently, as the CPU route's data loader workers do.

    Args:
        img_size: Side of the square output.
        scale: Area fraction range of the random crop.
        ratio: Aspect ratio range of the random crop.
        flip_prob: Probability of the horizontal flip.
        rand_augment: timm's RandAugment config string, or None for none.
        erasing_prob: Probability of random erasing (timm's ``mode='pixel'``, one box of 2-33% of the image).
        crop_pct: Evaluation crop over resized shorter side (0.875: 224 of 256).
        mean: Per-channel mean on 0-255 pixels; also RandAugment's fill, rounded.
        std: Per-channel std on 0-255 pixels.
    """

    def __init__(self, img_size: int = 224, scale: Sequence[float] = (0.08, 1.0),
                 ratio: Sequence[float] = (3 / 4, 4 / 3), flip_prob: float = 0.5,
                 rand_augment: Optional[str] = 'rand-m9-mstd0.5-inc1', erasing_prob: float = 0.25,
                 crop_pct: float = 0.875, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
                 non_blocking: bool = False):
        super().__init__(non_blocking=non_blocking)
        if not 0 < crop_pct <= 1:
            raise ValueError(f'crop_pct must be in (0, 1], got {crop_pct}')
        self.img_size, self.scale, self.ratio = img_size, tuple(scale), tuple(ratio)
        self.flip_prob, self.erasing_prob = flip_prob, erasing_prob
        self.resize = int(img_size / crop_pct)
        self.rand_augment = BatchRandAugment(rand_augment, fill=[round(m) for m in mean]) if rand_augment else None
        # not in the state dict: checkpoints stay interchangeable with ImgDataPreprocessor's
        self.register_buffer('mean', torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.register_buffer('std', torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self._generators: Optional[Tuple[torch.Generator, torch.Generator]] = None

    accepts_prepared = True   # PrefetchEpochBasedTrainLoop may run it a step ahead, in a thread

    def forward(self, data: Dict[str, Any], training: bool = False) -> Dict[str, Any]:
        if isinstance(data, PreparedBatch):   # already through this preprocessor (visionssm.mm.prefetch)
            return data.ready()
        encoded, samples = data['inputs'], data.get('data_samples')
        if not isinstance(encoded, (list, tuple)) or not all(
                isinstance(x, torch.Tensor) and x.dtype == torch.uint8 and x.ndim == 1 for x in encoded):
            got = type(encoded).__name__ if not isinstance(encoded, (list, tuple)) else \
                ', '.join(sorted({f'{type(x).__name__} {getattr(x, "dtype", "")} {getattr(x, "ndim", "")}-d'
                                  for x in encoded}))
            raise TypeError(f'{type(self).__name__} expects a list of encoded files (1-D uint8 tensors; end the '
                            f"pipeline with dict(type='PackEncodedImage')), got {got}")
        # mmengine calls it inside the AMP context: sampling grids and filters in half precision would be off by
        # fractions of a pixel and grey levels
        with torch.autocast(self.mean.device.type, enabled=False):
            images, samples = self.decode(encoded, samples)
            if training:
                batch = self.crop_flip(images)
                if self.rand_augment is not None:
                    batch = self.rand_augment(batch, self.generators()[0])
                batch = self.normalize(batch, erase=True)
            else:
                batch = self.normalize(self.center_crop(images))
        return dict(inputs=batch, data_samples=samples_to_device(samples, self.mean.device, self._non_blocking))

    def generators(self) -> Tuple[torch.Generator, torch.Generator]:
        """The host generator of the parameters and the device generator of the erasing noise."""
        device = self.mean.device
        if self._generators is None or self._generators[1].device != device:
            from mmengine.dist import get_rank
            seed = (torch.initial_seed() + 1_000_003 * get_rank()) % 2 ** 63
            host = torch.Generator().manual_seed(seed)
            self._generators = host, host if device.type == 'cpu' else torch.Generator(device).manual_seed(seed)
        return self._generators

    # The steps of ``forward``, one method each so that benchmarks/data_pipeline.py can time them.

    def decode(self, encoded: Sequence[torch.Tensor], samples: Optional[list] = None):
        """The batch's images on the model's device; an unreadable file is replaced by another image and sample."""
        images = decode_images([x.cpu() for x in encoded], self.mean.device)
        return self._replace_unreadable(images, samples)

    def crop_flip(self, images: Sequence[torch.Tensor]) -> torch.Tensor:
        """RandomResizedCrop and horizontal flip: a ``uint8`` batch."""
        generator = self.generators()[0]
        sizes = torch.tensor([image.shape[-2:] for image in images])
        boxes = random_resized_crop_params(sizes, self.scale, self.ratio, generator=generator)
        batch = resized_crops(images, boxes, self.img_size)
        flip = _to(torch.rand(len(batch), generator=generator) < self.flip_prob, batch.device)
        return torch.where(flip.view(-1, 1, 1, 1), batch.flip(-1), batch)

    def center_crop(self, images: Sequence[torch.Tensor]) -> torch.Tensor:
        """The evaluation view: a ``uint8`` batch."""
        return resize_center_crop(images, self.resize, self.img_size)

    def normalize(self, batch: torch.Tensor, erase: bool = False) -> torch.Tensor:
        """To float, normalised; then, if ``erase``, random erasing (timm erases normalised images)."""
        batch = (batch.float() - self.mean) / self.std
        if erase and self.erasing_prob > 0:
            batch = random_erasing(batch, self.erasing_prob, generator=self.generators()[0],
                                   noise_generator=self.generators()[1])
        return batch

    @staticmethod
    def _replace_unreadable(images: List[Optional[torch.Tensor]], samples: Optional[list]):
        bad = [i for i, image in enumerate(images) if image is None]
        if not bad:
            return images, samples
        good = [i for i, image in enumerate(images) if image is not None]

        def name(i):
            return samples[i].metainfo.get('img_path', f'image {i}') if samples is not None else f'image {i}'
        if not good:
            raise ValueError(f'no readable image in the batch (e.g. {name(bad[0])})')
        samples = list(samples) if samples is not None else None
        for k, i in enumerate(bad):
            print_log(f'skipping {name(i)}: not a readable image', logger='current', level=30)
            images[i] = images[good[k % len(good)]]
            if samples is not None:
                samples[i] = samples[good[k % len(good)]]
        return images, samples
