"""One definition of image decoding and preprocessing, shared by training, evaluation and serving.

Decoding is defensive because serving feeds it untrusted uploads: the format is decided by
content against an allow-list, the pixel count is checked from the header before any pixel
is decoded, and only the first frame of animated images is used. Phone photos come as HEIC
(HEIF, decoded by ``pillow-heif``'s libheif, which also applies the container's rotation)
and AVIF (Pillow's own); both are rotated upright from their EXIF orientation like JPEGs.
"""

from __future__ import annotations

import functools
import io
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps, UnidentifiedImageError
from torchvision.transforms import v2

from model.config import IMAGENET_MEAN, ModelConfig

ALLOWED_FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "GIF", "AVIF", "HEIF")
DEFAULT_MAX_PIXELS = 40_000_000


class ImageDecodeError(ValueError):
    """An input that is not an acceptable image. ``reason`` is one of
    ``unsupported`` (not an image, or a format outside the allow-list), ``corrupt`` and
    ``too_large`` (more pixels than allowed)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@functools.cache
def _register_heif() -> None:
    """Teaches Pillow to open HEIF/HEIC (once, on the first decode rather than at import)."""
    import pillow_heif

    pillow_heif.register_heif_opener()


def decode_image(
    data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS, target_size: int | None = None
) -> Image.Image:
    """Decodes bytes into an upright RGB image.

    ``target_size`` lets JPEG decoding downscale in the decoder (draft mode) when the model
    only needs a small image; the result is still at least ``target_size`` on its short side.
    """
    return decode_with_format(data, max_pixels=max_pixels, target_size=target_size)[0]


def decode_with_format(
    data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS, target_size: int | None = None
) -> tuple[Image.Image, str]:
    """:func:`decode_image`, also returning the detected format (one of ``ALLOWED_FORMATS``)."""
    if not data:
        raise ImageDecodeError("corrupt", "empty file")
    _register_heif()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)
    except UnidentifiedImageError as exc:
        raise ImageDecodeError(
            "unsupported", f"not an image in an accepted format ({', '.join(ALLOWED_FORMATS)})"
        ) from exc
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as exc:
        raise ImageDecodeError("too_large", "image has too many pixels") from exc
    except (OSError, ValueError, SyntaxError) as exc:
        raise ImageDecodeError("corrupt", f"unreadable image: {exc}") from exc
    width, height = image.size
    if width < 1 or height < 1:
        raise ImageDecodeError("corrupt", "image has no pixels")
    if width * height > max_pixels:
        raise ImageDecodeError(
            "too_large", f"image has {width * height} pixels, more than {max_pixels}"
        )
    try:
        if target_size is not None and image.format == "JPEG":
            image.draft("RGB", (target_size, target_size))
        image.load()  # GIF and WebP: the first frame only
        image_format = str(image.format)
        ImageOps.exif_transpose(image, in_place=True)  # no copy when nothing turns
        return _to_rgb(image), image_format
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise ImageDecodeError("corrupt", f"unreadable image: {exc}") from exc


def _to_rgb(image: Image.Image) -> Image.Image:
    """Converts any mode to 8-bit RGB; transparency is composited onto white."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        array = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode.startswith("I;16") or array.max() > 255 else 255.0
        eight_bit = np.clip(array / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        image = Image.fromarray(eight_bit, mode="L")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image if image.mode == "RGB" else image.convert("RGB")


def load_image_file(path: Path, target_size: int | None = None) -> Image.Image:
    """Reads and decodes an image file with the same rules as uploads."""
    return decode_image(path.read_bytes(), target_size=target_size)


def to_square_tensor(image: Image.Image, size: int) -> torch.Tensor:
    """Resizes the short side to ``size`` and centre-crops to a ``uint8`` ``(3, size, size)``."""
    width, height = image.size
    scale = size / min(width, height)
    new_w, new_h = max(size, round(width * scale)), max(size, round(height * scale))
    if (new_w, new_h) != (width, height):
        image = image.resize((new_w, new_h), Image.Resampling.BILINEAR, reducing_gap=3.0)
    if (new_w, new_h) != (size, size):
        left, top = (new_w - size) // 2, (new_h - size) // 2
        image = image.crop((left, top, left + size, top + size))
    array = np.asarray(image, dtype=np.uint8)
    return torch.from_numpy(array.copy()).permute(2, 0, 1).contiguous()


def decode_prepared(
    data: bytes, size: int, *, max_pixels: int = DEFAULT_MAX_PIXELS
) -> tuple[torch.Tensor, str]:
    """Decodes bytes straight into the model's ``uint8`` ``(3, size, size)`` input, with the
    detected format: the pixels of ``to_square_tensor(decode_image(data, target_size=size),
    size)``, and the same errors.

    A square JPEG no larger than ``size`` that holds nothing Pillow would act on (no EXIF
    orientation, no second picture, no Adobe colour transform) is decoded by libjpeg-turbo
    through torchvision and, when smaller, enlarged by :func:`enlarge_like_pillow`. That takes
    about 27 µs for a 32x32 image against 100 µs through Pillow, whose per-image Python work
    dominates at this size, and 166 µs against 246 µs when the image is enlarged to 64x64.
    Both paths run the same libjpeg-turbo decoder, and the tests hold them to identical
    pixels. Anything else, and any JPEG that torchvision refuses, goes through Pillow."""
    pixels = decode_thumbnail(data, size, max_pixels=max_pixels)
    if pixels is not None:
        return pixels, "JPEG"
    image, image_format = decode_with_format(data, max_pixels=max_pixels, target_size=size)
    return to_square_tensor(image, size), image_format


def decode_thumbnail(
    data: bytes, size: int, *, max_pixels: int = DEFAULT_MAX_PIXELS
) -> torch.Tensor | None:
    """:func:`decode_prepared`'s fast path alone: the model's ``uint8`` ``(3, size, size)``
    input for a plain square JPEG no larger than ``size``, or None for any other upload (which
    needs Pillow). It never decodes more than ``size`` x ``size`` pixels, so its cost is
    bounded by the model's input, not by the upload."""
    side = _plain_jpeg_side(data)
    if side is None or side > size or side * side > max_pixels:
        return None
    pixels = _decode_jpeg(data)
    if pixels is None or pixels.shape != (3, side, side):
        return None
    return pixels if side == size else enlarge_like_pillow(pixels, size)


_PILLOW_PRECISION_BITS = 22  # Pillow's fixed-point coefficients for 8-bit images: 32 - 8 - 2


@functools.lru_cache(maxsize=8)
def _pillow_bilinear_weights(in_size: int, out_size: int) -> np.ndarray:
    """``(in_size, out_size)`` float64 matrix of the integer coefficients Pillow's bilinear
    filter uses to enlarge ``in_size`` pixels to ``out_size`` (its ``precompute_coeffs`` and
    ``normalize_coeffs_8bpc``: support 1 when enlarging, weights normalised per output pixel,
    then rounded to 22-bit fixed point)."""
    scale = in_size / out_size
    weights = np.zeros((in_size, out_size), dtype=np.float64)
    for out in range(out_size):
        center = (out + 0.5) * scale
        first = max(0, int(center - 1.0 + 0.5))
        end = min(in_size, int(center + 1.0 + 0.5))
        taps = [max(0.0, 1.0 - abs(x - center + 0.5)) for x in range(first, end)]
        total = sum(taps)
        for x, tap in zip(range(first, end), taps, strict=True):
            normalised = tap / total if total != 0.0 else tap
            weights[x, out] = int(0.5 + normalised * (1 << _PILLOW_PRECISION_BITS))
    weights.setflags(write=False)  # shared by every caller through the cache
    return weights


def _to_eight_bit(accumulated: np.ndarray) -> np.ndarray:
    """Pillow's rounding of fixed-point sums back to 0-255, in place: add half, shift, clip.
    Exact in float64, whose 53-bit mantissa holds every such sum (under 2^31); the weights
    are not negative, so only the top needs clipping."""
    accumulated += float(1 << (_PILLOW_PRECISION_BITS - 1))
    accumulated *= 1.0 / (1 << _PILLOW_PRECISION_BITS)
    np.floor(accumulated, out=accumulated)
    return np.minimum(accumulated, 255.0, out=accumulated)


def enlarge_like_pillow(pixels: torch.Tensor, size: int) -> torch.Tensor:
    """A square ``uint8`` ``(3, side, side)`` image enlarged to ``(3, size, size)`` with
    exactly the pixels of Pillow's ``resize((size, size), BILINEAR)``: a horizontal pass,
    rounding to 8 bits, then a vertical pass, each with Pillow's integer coefficients. Two
    matrix products, each over all rows of the three channels at once."""
    channels, side, _ = pixels.shape
    weights = _pillow_bilinear_weights(side, size)
    rows = pixels.numpy().reshape(channels * side, side).astype(np.float64)
    wide = _to_eight_bit(rows @ weights).reshape(channels, side, size)
    columns = wide.transpose(0, 2, 1).reshape(channels * size, side)
    tall = _to_eight_bit(columns @ weights).reshape(channels, size, size).transpose(0, 2, 1)
    return torch.from_numpy(np.ascontiguousarray(tall, dtype=np.uint8))


# JPEG markers a plain image consists of before its scan: JFIF (APP0), comments,
# quantisation and Huffman tables, restart interval
_PLAIN_JPEG_SEGMENTS = frozenset({0xE0, 0xFE, 0xDB, 0xC4, 0xDD})
_FRAME_MARKERS = frozenset({0xC0, 0xC1, 0xC2})  # baseline, extended, progressive Huffman


def _plain_jpeg_side(data: bytes) -> int | None:
    """The side of a square, complete, 8-bit, greyscale or 3-channel JPEG made only of the
    segments in :data:`_PLAIN_JPEG_SEGMENTS`; None for anything else."""
    if not (data.startswith(b"\xff\xd8") and data.endswith(b"\xff\xd9")):
        return None
    position = 2
    while position + 4 <= len(data) and data[position] == 0xFF:
        marker = data[position + 1]
        length = int.from_bytes(data[position + 2 : position + 4], "big")
        if marker in _FRAME_MARKERS and position + 10 <= len(data):
            precision = data[position + 4]
            height = int.from_bytes(data[position + 5 : position + 7], "big")
            width = int.from_bytes(data[position + 7 : position + 9], "big")
            components = data[position + 9]
            plain = precision == 8 and width == height and components in (1, 3)
            return width if plain else None
        if marker not in _PLAIN_JPEG_SEGMENTS or length < 2:
            return None
        position += 2 + length
    return None


def _decode_jpeg(data: bytes) -> torch.Tensor | None:
    """libjpeg-turbo's RGB output through torchvision, or None where torchvision cannot
    decode it (an error in the data; or a torchvision without its image decoders, which it
    deprecates in favour of TorchCodec)."""
    try:
        from torchvision.io import ImageReadMode, decode_jpeg
    except ImportError:
        return None
    encoded = torch.frombuffer(bytearray(data), dtype=torch.uint8)
    try:
        return decode_jpeg(encoded, mode=ImageReadMode.RGB)
    except RuntimeError:
        return None


def normalize(batch: torch.Tensor, config: ModelConfig) -> torch.Tensor:
    """``uint8`` batch ``(N, 3, S, S)`` to the float input the network expects."""
    mean = torch.tensor(config.mean, dtype=torch.float32, device=batch.device).view(1, 3, 1, 1)
    std = torch.tensor(config.std, dtype=torch.float32, device=batch.device).view(1, 3, 1, 1)
    batch = batch.float().div_(255.0)
    if batch.shape[-1] != config.input_size or batch.shape[-2] != config.input_size:
        batch = F.interpolate(
            batch, size=(config.input_size, config.input_size), mode="bilinear", antialias=True
        )
    return (batch - mean) / std


BatchAugmentation = Callable[[torch.Tensor], torch.Tensor]


def build_augmentation(size: int, strength: str = "strong") -> BatchAugmentation:
    """Training augmentation of a ``uint8`` batch ``(N, 3, S, S)`` at the model's input size.

    ``strong``: random resized crops (35-100 % of the area), flips, colour jitter, grayscale
    and JPEG re-encoding, which suits small inputs where a pad-and-crop alone overfits
    quickly and teaches the invariances a near-duplicate search needs;
    ``light``: crops of 70-100 % and flips only;
    ``crop``: the classic CIFAR recipe, reflect-pad by an eighth of the side (4 px at 32 px),
    random crop and flip, done on the whole batch at once (the fastest, for long pre-training);
    ``cutout``: ``crop``, then :func:`cut_out` hides a square of half the image's side (also
    batched), a regulariser for pre-training that ends up fitting its training images.
    """
    padding = max(1, size // 8)
    if strength == "crop":
        return lambda batch: pad_crop_flip(batch, padding)
    if strength == "cutout":
        return lambda batch: cut_out(pad_crop_flip(batch, padding), size // 2)
    if strength == "light":
        steps: list[v2.Transform] = [
            v2.RandomResizedCrop(size, scale=(0.7, 1.0), antialias=True),
            v2.RandomHorizontalFlip(),
        ]
    elif strength == "strong":
        steps = [
            v2.RandomResizedCrop(size, scale=(0.35, 1.0), antialias=True),
            v2.RandomHorizontalFlip(),
            v2.RandomApply([v2.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8),
            v2.RandomGrayscale(p=0.1),
            v2.RandomApply([v2.JPEG((30, 95))], p=0.3),
        ]
    else:
        raise ValueError(f"unknown augmentation {strength!r}")
    pipeline = v2.Compose(steps)

    def per_image(batch: torch.Tensor) -> torch.Tensor:
        return torch.stack([pipeline(image) for image in batch])

    return per_image


def cut_out(batch: torch.Tensor, side: int) -> torch.Tensor:
    """Cutout (DeVries and Taylor, 2017): a ``side`` x ``side`` square around a random centre
    of each image, clipped at the borders, is set to the ImageNet mean colour, which the
    normalisation turns into zeros."""
    n, _, height, width = batch.shape
    rows = torch.arange(height).view(1, height, 1)
    cols = torch.arange(width).view(1, 1, width)
    top = torch.randint(0, height, (n, 1, 1)) - side // 2
    left = torch.randint(0, width, (n, 1, 1)) - side // 2
    hidden = (rows >= top) & (rows < top + side) & (cols >= left) & (cols < left + side)
    mean = torch.tensor([round(255 * m) for m in IMAGENET_MEAN], dtype=batch.dtype)
    return torch.where(hidden.unsqueeze(1), mean.view(1, 3, 1, 1), batch)


def pad_crop_flip(batch: torch.Tensor, padding: int = 4) -> torch.Tensor:
    """Reflect-pads a batch, takes one random crop of the original size per image and
    mirrors half of them, with tensor indexing instead of a per-image loop."""
    n, _, height, width = batch.shape
    padded = F.pad(batch.float(), (padding,) * 4, mode="reflect").to(batch.dtype)
    top = torch.randint(0, 2 * padding + 1, (n, 1))
    left = torch.randint(0, 2 * padding + 1, (n, 1))
    rows = (top + torch.arange(height)).view(n, 1, height, 1)
    cols = left + torch.arange(width)
    flip = torch.rand(n) < 0.5
    cols = torch.where(flip[:, None], cols.flip(1), cols).view(n, 1, 1, width)
    channels = torch.arange(batch.shape[1]).view(1, -1, 1, 1)
    return padded[torch.arange(n).view(n, 1, 1, 1), channels, rows, cols]
