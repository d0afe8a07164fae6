import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import model.preprocessing
from model.config import ModelConfig
from model.preprocessing import (
    ImageDecodeError,
    build_augmentation,
    cut_out,
    decode_image,
    decode_prepared,
    decode_with_format,
    enlarge_like_pillow,
    normalize,
    pad_crop_flip,
    to_square_tensor,
)
from tests.conftest import CIFAR, image_bytes


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "BMP", "GIF", "AVIF", "HEIF"])
def test_allowed_formats_decode_to_rgb(fmt: str) -> None:
    image, detected = decode_with_format(image_bytes(fmt))
    assert image.mode == "RGB" and image.size == (40, 30) and detected == fmt


@pytest.mark.parametrize(
    ("mode", "fmt"),
    [("CMYK", "JPEG"), ("I;16", "PNG"), ("L", "PNG"), ("1", "BMP"), ("RGBA", "PNG")],
)
def test_odd_modes_become_rgb(mode: str, fmt: str) -> None:
    assert decode_image(image_bytes(fmt, mode=mode)).mode == "RGB"


def test_sixteen_bit_grey_keeps_its_brightness() -> None:
    array = np.full((8, 8), 65535 // 2, dtype=np.uint16)
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    pixel = decode_image(buffer.getvalue()).getpixel((0, 0))
    assert pixel == (127, 127, 127)  # 32767 / 65535 * 255 = 127.5 - epsilon


def test_transparent_palette_is_composited_on_white() -> None:
    image = Image.new("P", (4, 4), 0)
    image.putpalette([0, 0, 0] * 256)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", transparency=0)
    assert decode_image(buffer.getvalue()).getpixel((0, 0)) == (255, 255, 255)


@pytest.mark.parametrize("fmt", ["JPEG", "AVIF", "HEIF"])
def test_exif_rotation_is_applied(fmt: str) -> None:
    image = Image.new("RGB", (40, 20), (0, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise
    decode_image(image_bytes("PNG"))  # registers the HEIF writer as well as the reader
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, exif=exif.tobytes())
    assert decode_image(buffer.getvalue()).size == (20, 40)


@pytest.mark.parametrize("fmt", ["AVIF", "HEIF"])
def test_a_phone_photo_comes_out_upright(fmt: str, photos: Path) -> None:
    """A real photograph stored the way a phone stores it (pixels as the sensor saw them,
    turned a quarter, and an EXIF orientation saying so) decodes to the upright picture."""
    upright = decode_image(sorted((photos / "cat").iterdir())[0].read_bytes())
    exif = Image.Exif()
    exif[0x0112] = 6  # shown after turning 90 degrees clockwise
    buffer = io.BytesIO()
    upright.transpose(Image.Transpose.ROTATE_90).save(
        buffer, format=fmt, exif=exif.tobytes(), quality=90
    )
    decoded, detected = decode_with_format(buffer.getvalue())
    assert detected == fmt and decoded.size == upright.size
    difference = np.abs(np.asarray(decoded, np.int16) - np.asarray(upright, np.int16))
    assert difference.mean() < 6  # lossy, but the same picture the same way up


@pytest.mark.parametrize("fmt", ["AVIF", "HEIF"])
def test_phone_formats_are_held_to_the_pixel_limit_before_decoding(fmt: str) -> None:
    with pytest.raises(ImageDecodeError) as info:
        decode_image(image_bytes(fmt, size=(300, 300)), max_pixels=200 * 200)
    assert info.value.reason == "too_large"


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "corrupt"),
        (b"%!PS-Adobe-3.0 EPSF-3.0\n", "unsupported"),
        (b"<svg xmlns='http://www.w3.org/2000/svg'/>", "unsupported"),
        (image_bytes("TIFF"), "unsupported"),
        (image_bytes("PNG")[:60], "corrupt"),
    ],
)
def test_bad_inputs_are_refused(data: bytes, reason: str) -> None:
    with pytest.raises(ImageDecodeError) as info:
        decode_image(data)
    assert info.value.reason == reason


def test_pixel_limit_is_checked_before_decoding() -> None:
    with pytest.raises(ImageDecodeError) as info:
        decode_image(image_bytes("PNG", size=(300, 300)), max_pixels=200 * 200)
    assert info.value.reason == "too_large"


def test_draft_mode_keeps_at_least_the_target_size() -> None:
    image = decode_image(image_bytes("JPEG", size=(640, 480)), target_size=32)
    assert min(image.size) >= 32 and image.size[0] < 640


def test_square_tensor_and_normalisation() -> None:
    config = ModelConfig(input_size=32)
    tensor = to_square_tensor(Image.new("RGB", (64, 48), (255, 0, 0)), 32)
    assert tensor.shape == (3, 32, 32) and tensor.dtype == torch.uint8
    assert to_square_tensor(Image.new("RGB", (1, 1)), 32).shape == (3, 32, 32)
    batch = normalize(tensor[None], config)
    assert batch[0, 0, 0, 0].item() == pytest.approx((1 - 0.485) / 0.229, abs=1e-4)


@pytest.mark.parametrize("strength", ["strong", "light", "crop", "cutout"])
def test_augmentation_keeps_shape_and_type(strength: str) -> None:
    batch = torch.randint(0, 255, (5, 3, 32, 32), dtype=torch.uint8)
    out = build_augmentation(32, strength)(batch)
    assert out.shape == batch.shape and out.dtype == torch.uint8
    assert not torch.equal(out, batch)


@pytest.mark.parametrize("size", [32, 64])
def test_crop_augmentation_shifts_by_an_eighth_of_the_side(size: int) -> None:
    """Each pixel holds its row number, so the first row of a crop tells how far it was
    shifted: reflect padding by ``size // 8`` puts row ``size // 8`` there at the extremes."""
    rows = torch.arange(size, dtype=torch.uint8).view(1, 1, size, 1)
    batch = rows.expand(400, 3, size, size).contiguous()
    out = build_augmentation(size, "crop")(batch)
    assert out[:, 0, 0, 0].max().item() == size // 8


def test_pad_crop_flip_takes_shifted_or_mirrored_crops() -> None:
    batch = torch.randint(0, 255, (64, 3, 8, 8), dtype=torch.uint8)
    unpadded = pad_crop_flip(batch, padding=0)
    for image, out in zip(batch, unpadded, strict=True):
        assert torch.equal(out, image) or torch.equal(out, image.flip(-1))
    flipped = sum(not torch.equal(o, i) for o, i in zip(unpadded, batch, strict=True))
    assert 10 < flipped < 54
    shifted = pad_crop_flip(batch, padding=2)
    padded = torch.nn.functional.pad(batch.float(), (2, 2, 2, 2), mode="reflect")
    for image, out in zip(padded, shifted, strict=True):
        windows = [
            image[:, top : top + 8, left : left + 8] for top in range(5) for left in range(5)
        ]
        assert any(
            torch.equal(out.float(), w) or torch.equal(out.float(), w.flip(-1)) for w in windows
        )


def test_real_photo_decodes(photos: Path) -> None:
    path = next(iter(sorted((photos / "cat").iterdir())))
    assert decode_image(path.read_bytes()).mode == "RGB"


def test_downscaling_is_antialiased() -> None:
    """One-pixel stripes shrunk to 32 px average to grey instead of aliasing into bands
    (what a photograph's fine texture would otherwise become at the model's input size)."""
    stripes = np.zeros((480, 480, 3), dtype=np.uint8)
    stripes[:, ::2] = 255
    buffer = io.BytesIO()
    Image.fromarray(stripes).save(buffer, format="PNG")
    small = to_square_tensor(decode_image(buffer.getvalue(), target_size=32), 32).float()
    assert small.mean().item() == pytest.approx(127.5, abs=3)
    assert small.std().item() < 3


def through_pillow(data: bytes, size: int) -> torch.Tensor:
    return to_square_tensor(decode_image(data, target_size=size), size)


@pytest.mark.parametrize("size", [32, 64, 48])
def test_thumbnail_jpegs_skip_pillow_with_the_same_pixels(
    size: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """CIFAR-10's 32x32 JPEGs at the model's size, and enlarged to a larger one."""
    files = [p.read_bytes() for c in sorted(CIFAR.iterdir()) for p in sorted(c.iterdir())[:20]]
    expected = [through_pillow(data, size) for data in files]

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("went through Pillow")

    monkeypatch.setattr(model.preprocessing, "decode_with_format", refuse)
    for data, pixels in zip(files, expected, strict=True):
        prepared, detected = decode_prepared(data, size)
        assert torch.equal(prepared, pixels) and detected == "JPEG"


@pytest.mark.parametrize(
    ("side", "size"), [(32, 64), (32, 33), (31, 64), (17, 100), (1, 5), (2, 3), (50, 224)]
)
def test_enlarging_gives_pillows_pixels(side: int, size: int) -> None:
    """Pillow's bilinear enlargement, bit for bit, on noise (every rounding case shows)."""
    noise = np.random.default_rng(side * 1000 + size).integers(0, 256, (side, side, 3), np.uint8)
    expected = np.array(Image.fromarray(noise).resize((size, size), Image.Resampling.BILINEAR))
    pixels = torch.from_numpy(noise).permute(2, 0, 1).contiguous()
    enlarged = enlarge_like_pillow(pixels, size)
    assert enlarged.dtype == torch.uint8 and enlarged.shape == (3, size, size)
    assert torch.equal(enlarged.permute(1, 2, 0), torch.from_numpy(expected))


def square_jpeg(**save: object) -> bytes:
    """A 32x32 JPEG with detail in it (a real CIFAR image, re-encoded with ``save``)."""
    image = Image.open(sorted((CIFAR / "cat").iterdir())[0])
    buffer = io.BytesIO()
    image.convert(str(save.pop("mode", "RGB"))).save(buffer, format="JPEG", **save)
    return buffer.getvalue()


ROTATED = Image.Exif()
ROTATED[0x0112] = 6  # rotate 90 degrees clockwise


@pytest.mark.parametrize(
    "data",
    [
        square_jpeg(progressive=True, quality=80),
        square_jpeg(subsampling=0, quality=95),
        square_jpeg(mode="L"),
        square_jpeg(mode="CMYK"),
        square_jpeg(exif=ROTATED.tobytes()),
        image_bytes("JPEG", size=(40, 30)),
        image_bytes("PNG", size=(32, 32)),
    ],
    ids=["progressive", "4:4:4", "grey", "CMYK", "EXIF-rotated", "not square", "PNG"],
)
@pytest.mark.parametrize("size", [32, 64])
def test_decode_prepared_gives_pillows_pixels(data: bytes, size: int) -> None:
    assert torch.equal(decode_prepared(data, size)[0], through_pillow(data, size))
    assert decode_prepared(data, size)[1] == decode_with_format(data)[1]


def test_decode_prepared_keeps_pillows_errors() -> None:
    data = square_jpeg()
    for broken in (data[: len(data) // 2], data[: len(data) // 2] + b"\xff\xd9"):
        with pytest.raises(ImageDecodeError) as raised:
            decode_prepared(broken, 32)
        assert raised.value.reason == "corrupt"
    with pytest.raises(ImageDecodeError, match="pixels") as too_large:
        decode_prepared(square_jpeg(), 32, max_pixels=100)  # the limit holds on either path
    assert too_large.value.reason == "too_large"


def test_cut_out_hides_one_clipped_square_per_image() -> None:
    torch.manual_seed(0)
    out = cut_out(torch.zeros((64, 3, 8, 8), dtype=torch.uint8), 4)
    hidden = out[:, 0] != 0  # the mean colour (124, 116, 104) has no zero channel
    assert torch.equal(out[:, 0][hidden].unique(), torch.tensor([124], dtype=torch.uint8))
    assert torch.equal(out[:, 1] != 0, hidden) and torch.equal(out[:, 2] != 0, hidden)
    counts = hidden.sum(dim=(1, 2))
    rows, cols = hidden.any(dim=2).sum(dim=1), hidden.any(dim=1).sum(dim=1)
    assert torch.equal(counts, rows * cols)  # a rectangle: the square, clipped at the borders
    assert int(counts.max()) == 16 and int(counts.min()) >= 4  # 4x4 inside; at least 2x2
    assert bool((counts < 16).any())  # some squares reach past a border
