"""DeepSeek-OCR image rules (SPEC 5): grids, token counts, and the processor's pixels."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from ocrcat.catalog.images import inspect_image
from ocrcat.vision import MODES, VisionProcessor, choose_grid, count_image_tokens

# Reference table worked out by hand from the rules: per mode (grid, tokens).
# Global view: nb = base/64, nb*(nb+1)+1 tokens; a grid w x h > 1 adds (10w+1)*(10h) for 640 tiles.
# Non-tiled modes are one view whatever the size: tiny 73, small 111, base 273, large 421.
REFERENCE = {
    # size: (gundam grid, gundam tokens, gundam-max9 grid, gundam-max9 tokens)
    (640, 480): ((1, 1), 273, (1, 1), 273),  # not larger than 640 on either side: no tiling
    (1024, 1024): ((2, 2), 693, (2, 2), 693),  # 3x3 ties but 1024^2 < 0.5*640^2*9
    (1700, 2200): ((2, 3), 903, (2, 3), 903),
    (300, 60): ((1, 1), 273, (1, 1), 273),
    (2000, 500): ((4, 1), 683, (4, 1), 683),
    (641, 641): ((2, 2), 693, (2, 2), 693),  # one pixel past the tile: tiled, and square
    (1920, 1080): ((2, 1), 483, (4, 2), 1093),  # max 9: 4x2 ties 2x1 exactly and has the area
    (1400, 1400): ((2, 2), 693, (3, 3), 1203),  # max 9: 3x3 ties 2x2, 1400^2 > 0.5*640^2*9
    (1280, 1280): ((2, 2), 693, (2, 2), 693),  # 1280^2 = 0.5*640^2*8 < 0.5*640^2*9: stays 2x2
    (2500, 1000): ((3, 1), 583, (4, 2), 1093),  # aspect 2.5: 2x1/3x1 tie -> 3x1; max 9 -> 4x2
}
FIXED = {"tiny": 73, "small": 111, "base": 273, "large": 421}


@pytest.mark.parametrize("size", list(REFERENCE))
def test_reference_table_every_mode(size):
    g6, t6, g9, t9 = REFERENCE[size]
    assert (choose_grid(*size, "gundam"), count_image_tokens(*size, "gundam")) == (g6, t6)
    assert (choose_grid(*size, "gundam-max9"), count_image_tokens(*size, "gundam-max9")) == (g9, t9)
    for mode, tokens in FIXED.items():
        assert choose_grid(*size, mode) == (1, 1)
        assert count_image_tokens(*size, mode) == tokens


def test_max6_and_max9_differ_only_where_the_table_says():
    differ = {s for s, (g6, _, g9, _) in REFERENCE.items() if g6 != g9}
    assert differ == {(1920, 1080), (1400, 1400), (2500, 1000)}
    assert count_image_tokens(1920, 1080) == count_image_tokens(1920, 1080, "gundam") == 483  # default = max 6


@pytest.mark.parametrize("mode", list(MODES))
def test_processor_shapes_per_mode(mode):
    m = MODES[mode]
    out = VisionProcessor(mode)(Image.new("RGB", (1700, 2200), (200, 10, 10)))
    assert out.global_view.shape == (3, m.base_size, m.base_size) and out.global_view.dtype == torch.uint8
    assert out.tokens == count_image_tokens(1700, 2200, mode)
    w, h = out.grid
    assert out.crops.shape[0] == (w * h if (w, h) != (1, 1) else 0)
    if out.crops.shape[0]:
        assert out.crops.shape[1:] == (3, m.tile_size, m.tile_size) and out.crops.dtype == torch.uint8


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 3000), st.integers(1, 3000), st.sampled_from(list(MODES)))
def test_processor_crops_and_catalog_count_agree(width, height, mode):
    out = VisionProcessor(mode)(Image.new("RGB", (width, height), (30, 60, 90)))
    m = MODES[mode]
    n_crops = out.crops.shape[0]
    w, h = out.grid
    assert n_crops == (w * h if w * h > 1 else 0)
    assert m.min_crops <= n_crops <= m.max_crops or n_crops == 0
    # The count from the crops actually produced equals the catalog's count from the size alone.
    nb, ni = m.base_size // 64, m.tile_size // 64
    from_pixels = nb * (nb + 1) + 1 + ((ni * w + 1) * (ni * h) if n_crops else 0)
    assert from_pixels == out.tokens == count_image_tokens(width, height, mode)


def test_crops_are_cut_row_by_row_from_the_stretched_image():
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 256, (1000, 2600, 3), dtype=np.uint8))
    out = VisionProcessor("gundam")(img)
    w, h = out.grid
    assert (w, h) == choose_grid(2600, 1000) == (3, 1)
    canvas = np.asarray(img.resize((640 * w, 640 * h), Image.Resampling.BICUBIC))
    for k in range(w * h):
        row, col = divmod(k, w)
        tile = canvas[row * 640:(row + 1) * 640, col * 640:(col + 1) * 640]
        assert np.array_equal(out.crops[k].permute(1, 2, 0).numpy(), tile)


def test_crop_order_for_a_tall_grid():
    # Colour each 640 block of a 2x3 canvas differently; the crops must come out row by row.
    colours = [(i * 40, 255 - i * 40, 7 * i) for i in range(6)]
    canvas = np.zeros((1920, 1280, 3), dtype=np.uint8)
    for k, c in enumerate(colours):
        r, col = divmod(k, 2)
        canvas[r * 640:(r + 1) * 640, col * 640:(col + 1) * 640] = c
    out = VisionProcessor("gundam")(Image.fromarray(canvas))
    assert out.grid == (2, 3)
    assert [tuple(out.crops[k][:, 320, 320].tolist()) for k in range(6)] == colours


def test_global_view_pads_grey_centred_and_small_modes_stretch():
    img = Image.new("RGB", (2000, 500), (255, 255, 255))
    g = VisionProcessor("base")(img).global_view
    # 2000x500 fits as 1024x256, centred: grey bars of 384 rows above and below.
    assert g[:, 0, 0].tolist() == [127, 127, 127] and g[:, 1023, 512].tolist() == [127, 127, 127]
    assert g[:, 512, 512].tolist() == [255, 255, 255]
    assert (g[:, 383, :] == 127).all() and (g[:, 384 + 5, :] == 255).all()
    tiny = VisionProcessor("tiny")(img).global_view
    assert tiny.shape == (3, 512, 512) and (tiny == 255).all()  # stretched, no bars


def test_exif_rotation_is_applied_and_counted_alike():
    # A 1400x700 JPEG whose EXIF says "rotate 90": the model sees 700x1400.
    buf = io.BytesIO()
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.new("RGB", (1400, 700), (0, 0, 255)).save(buf, "JPEG", exif=exif)
    data = buf.getvalue()
    fmt, w, h = inspect_image(data)
    assert (w, h) == (700, 1400)  # what the catalog records and counts with
    out = VisionProcessor("gundam")(io.BytesIO(data))
    assert out.grid == choose_grid(700, 1400) == (1, 2)
    assert out.tokens == count_image_tokens(w, h)


def test_grey_and_palette_images_become_rgb():
    for img in (Image.new("L", (700, 700), 9), Image.new("P", (100, 50)), Image.new("RGBA", (900, 300))):
        out = VisionProcessor("gundam")(img)
        assert out.global_view.shape[0] == 3


def test_bad_sizes_and_modes_say_what_is_wrong():
    with pytest.raises(ValueError, match="unknown vision mode 'huge'"):
        VisionProcessor("huge")
    with pytest.raises(ValueError, match="positive"):
        count_image_tokens(0, 10)
