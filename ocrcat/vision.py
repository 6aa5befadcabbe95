"""DeepSeek-OCR image rules: vision modes, the Gundam tiling choice and the `<image>` token count.

This is a leaf module (it imports nothing of ocrcat): the catalog uses it to fill `image_tokens`
and the training path uses it to cut pixels, so the two can never disagree.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch and PIL load only when pixels are made: the catalog counts without them
    import torch
    from PIL import Image

PATCH_SIZE = 16
DOWNSAMPLE = 4  # the projector merges 4x4 patches into one token


@dataclass(frozen=True)
class VisionMode:
    name: str
    base_size: int  # side of the global view
    tile_size: int = 0  # side of a local crop; 0 = no tiling
    min_crops: int = 0
    max_crops: int = 0
    pad: bool = True  # True: fit into base² with grey bars; False: stretch to base²

    @property
    def tiled(self) -> bool:
        return self.tile_size > 0


IMAGE_PLACEHOLDER = "<image>"  # how catalog text marks where an image goes: once, first, in a vision row

MODES: dict[str, VisionMode] = {
    "tiny": VisionMode("tiny", 512, pad=False),
    "small": VisionMode("small", 640, pad=False),
    "base": VisionMode("base", 1024),
    "large": VisionMode("large", 1280),
    # DeepSeek-OCR's vLLM config uses at most 6 crops; its Hugging Face `infer` path allows 9.
    "gundam": VisionMode("gundam", 1024, tile_size=640, min_crops=2, max_crops=6),
    "gundam-max9": VisionMode("gundam-max9", 1024, tile_size=640, min_crops=2, max_crops=9),
}
DEFAULT_MODE = "gundam"


def get_mode(mode: str | VisionMode) -> VisionMode:
    """The VisionMode for a name, with a clear error for an unknown one."""
    if isinstance(mode, VisionMode):
        return mode
    try:
        return MODES[mode]
    except KeyError:
        raise ValueError(f"unknown vision mode {mode!r}; choose one of {', '.join(MODES)}") from None


def candidate_grids(min_crops: int, max_crops: int) -> list[tuple[int, int]]:
    """All (w_tiles, h_tiles) with min <= w*h <= max, ordered by w*h (ties by w, then h)."""
    grids = {
        (w, h)
        for n in range(min_crops, max_crops + 1)
        for w in range(1, n + 1)
        for h in range(1, n + 1)
        if min_crops <= w * h <= max_crops
    }
    return sorted(grids, key=lambda g: (g[0] * g[1], g[0], g[1]))


def choose_grid(width: int, height: int, mode: str | VisionMode = DEFAULT_MODE) -> tuple[int, int]:
    """The crop grid (w_tiles, h_tiles) for an image; (1, 1) means global view only."""
    m = get_mode(mode)
    if width <= 0 or height <= 0:
        raise ValueError(f"image size must be positive, got {width}x{height}")
    if not m.tiled or (width <= m.tile_size and height <= m.tile_size):
        return (1, 1)
    aspect = width / height
    area = width * height
    best, best_diff = (1, 1), float("inf")
    for w, h in candidate_grids(m.min_crops, m.max_crops):
        diff = abs(aspect - w / h)
        if diff < best_diff:
            best, best_diff = (w, h), diff
        elif diff == best_diff and area > 0.5 * m.tile_size * m.tile_size * w * h:
            # On an exact tie a larger grid wins only if the image has pixels enough to fill it.
            best = (w, h)
    return best


def tokens_for_grid(grid: tuple[int, int], mode: str | VisionMode = DEFAULT_MODE) -> int:
    """Token count of the global view plus, for a grid larger than 1x1, the local crops."""
    m = get_mode(mode)
    nb = math.ceil(m.base_size / PATCH_SIZE / DOWNSAMPLE)
    tokens = nb * (nb + 1) + 1  # one newline token per row of the global view, plus a separator
    w, h = grid
    if m.tiled and w * h > 1:
        ni = math.ceil(m.tile_size / PATCH_SIZE / DOWNSAMPLE)
        tokens += (ni * w + 1) * (ni * h)
    return tokens


def count_image_tokens(width: int, height: int, mode: str = DEFAULT_MODE) -> int:
    """Number of `<image>` tokens DeepSeek-OCR spends on an image of this size in this mode."""
    return tokens_for_grid(choose_grid(width, height, mode), mode)


@dataclass
class ProcessedImage:
    """One image cut for the model: uint8 pixels (normalised later, on the device).

    The tensors have the documented (…, 3, H, W) shapes but channels-last memory (H, W, 3
    underneath, as PIL decodes): turning HWC into CHW on the CPU costs more than every other copy
    of the loader together, while on the GPU it is free. They share PIL's read-only buffer: treat
    them as read-only (the collator copies them into the batch).
    """

    global_view: "torch.Tensor"  # (3, base, base) uint8
    crops: "torch.Tensor"  # (w_tiles * h_tiles, 3, tile, tile) uint8, empty when grid == (1, 1)
    grid: tuple[int, int]  # (w_tiles, h_tiles)
    tokens: int  # `<image>` tokens: always count_image_tokens of the transposed image's size


class VisionProcessor:
    """Turns an image (path, file object or PIL image) into DeepSeek-OCR's global view and local crops.

    The grid comes from `choose_grid` and the count from `tokens_for_grid`, the same functions that
    fill the catalog's `image_tokens`, so a row's count and its crops cannot disagree.

    >>> out = VisionProcessor("gundam")("page.png")
    >>> out.global_view.shape, out.crops.shape, out.grid, out.tokens
    """

    def __init__(self, mode: str | VisionMode = DEFAULT_MODE):
        self.mode = get_mode(mode)
        self.pad_color = (127, 127, 127)  # int(0.5 * 255): the mean, so padding normalises to ~0

    def load(self, image) -> "Image.Image":
        """RGB image after EXIF transpose (a phone photo turned by its EXIF tag is seen upright)."""
        from PIL import Image, ImageOps

        if not isinstance(image, Image.Image):
            with Image.open(image) as img:
                img.load()
                return self.load(img)
        # Both calls copy the whole image even when they change nothing: call them only if needed.
        if image.getexif().get(0x0112, 1) != 1:
            image = ImageOps.exif_transpose(image)
        return image if image.mode == "RGB" else image.convert("RGB")

    def views(self, image) -> tuple["Image.Image", "Image.Image | None", tuple[int, int]]:
        """The global view, the (640w x 640h) canvas the crops are cut from (or None), the grid."""
        from PIL import ImageOps

        img = self.load(image)
        m = self.mode
        grid = choose_grid(img.width, img.height, m)
        if m.pad:
            global_view = ImageOps.pad(img, (m.base_size, m.base_size), color=self.pad_color)
        else:
            global_view = img.resize((m.base_size, m.base_size))
        canvas = None
        if grid != (1, 1):
            canvas = img.resize((m.tile_size * grid[0], m.tile_size * grid[1]))
        return global_view, canvas, grid

    def __call__(self, image) -> ProcessedImage:
        # torch is imported here, not at the top, so the catalog can use this module without it.
        import torch

        global_view, canvas, grid = self.views(image)
        t = self.mode.tile_size
        if canvas is None:
            crops = torch.empty((0, t, t, 3), dtype=torch.uint8)
        else:
            # Cut row by row: (h, t, w, t, 3) -> (h, w, t, t, 3), one copy of runs of t pixels.
            w, h = grid
            crops = _hwc(canvas).view(h, t, w, t, 3).permute(0, 2, 1, 3, 4).reshape(h * w, t, t, 3)
        return ProcessedImage(_hwc(global_view).permute(2, 0, 1), crops.permute(0, 3, 1, 2), grid,
                              tokens_for_grid(grid, self.mode))


def _hwc(img) -> "torch.Tensor":
    """A PIL RGB image as an (H, W, 3) uint8 tensor over PIL's own bytes (no further copy)."""
    import warnings

    import numpy as np
    import torch

    with warnings.catch_warnings():
        # PIL's buffer is read-only; torch warns that writing to it would be undefined. We never do.
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(np.asarray(img))
