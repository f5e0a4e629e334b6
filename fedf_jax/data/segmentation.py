"""Binary segmentation data: image/mask folders, ISBI-2012 TIFF stacks, synthetic shapes.

A :class:`Dataset` of segmentation data holds masks where a classifier's holds
labels: ``y: i32[S, H, W]`` class ids (0 background, 1 foreground), ``num_classes=2``.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageSequence

from fedf_jax.data import Dataset

_EXTS = (".png", ".tif", ".tiff")
_COLOR_MODES = ("RGB", "RGBA", "RGBX", "P", "PA", "CMYK", "YCbCr", "LAB", "HSV")
_ISBI = ("train-volume.tif", "train-labels.tif")
_EXPECTED = ("expected images/ and masks/ subfolders (same file stems; .png, .tif, .tiff) "
             f"or the ISBI-2012 stacks {_ISBI[0]} + {_ISBI[1]}")


def _pages(path: Path) -> list[Image.Image]:
    """Every page of an image file (one for PNG, several for a TIFF stack)."""
    try:
        with Image.open(path) as im:
            return [page.copy() for page in ImageSequence.Iterator(im)]
    except OSError as e:
        raise ValueError(f"cannot read image file {path}: {e}.") from e


def _image(page: Image.Image) -> np.ndarray:
    """f32[H, W, C] in [0, 1]; C = 3 for colour modes, else 1."""
    if page.mode in _COLOR_MODES:
        return np.asarray(page.convert("RGB"), np.float32) / 255
    a = np.asarray(page.convert("L") if page.mode in ("1", "LA") else page)
    if a.dtype.kind == "u":  # 8 or 16 bit
        x = a / np.iinfo(a.dtype).max
    else:  # 32-bit int or float TIFFs have no fixed range: scale each image to [0, 1]
        a = a.astype(np.float64)
        x = (a - a.min()) / max(float(np.ptp(a)), 1e-12)
    return x.astype(np.float32)[..., None]


def _mask(page: Image.Image, half: bool) -> np.ndarray:
    """u8[H, W] in {0, 1}: value > 0, or with ``half`` value > half the range (ISBI)."""
    a = np.asarray(page.convert("L") if page.mode in (*_COLOR_MODES, "1", "LA") else page)
    top = np.iinfo(a.dtype).max if a.dtype.kind == "u" else 255
    return (a > (top // 2 if half else 0)).astype(np.uint8)


def _find_pairs(root: Path) -> tuple[list[tuple[Path, Path]], bool]:
    """(image file, mask file) pairs, and whether masks threshold at half the range."""
    if not root.is_dir():
        raise ValueError(f"`data_dir` (={str(root)!r}) is not a folder: {_EXPECTED}.")
    images, masks = root / "images", root / "masks"
    if images.is_dir():
        if not masks.is_dir():
            raise ValueError(f"{masks} is missing: expected a mask file for each file in "
                             f"{images}.")
        files = sorted(p for p in images.iterdir() if p.suffix.lower() in _EXTS)
        if not files:
            raise ValueError(f"{images} holds no image files (expected {', '.join(_EXTS)}).")
        by_stem = {p.stem: p for p in masks.iterdir() if p.suffix.lower() in _EXTS}
        for p in files:
            if p.stem not in by_stem:
                raise ValueError(f"no mask for image {p}: expected {masks / p.stem}"
                                 f"{{{','.join(_EXTS)}}}.")
        return [(p, by_stem[p.stem]) for p in files], False
    volume, labels = root / _ISBI[0], root / _ISBI[1]
    if volume.is_file():
        if not labels.is_file():
            raise ValueError(f"{labels} is missing: expected one mask page per page of {volume}.")
        # ISBI-2012 labels: membrane = 0 (class 0), cell = 255 (class 1).
        return [(volume, labels)], True
    raise ValueError(f"`data_dir` (={str(root)!r}) holds no segmentation data: {_EXPECTED}.")


def _resize(a: np.ndarray, size: tuple[int, int], resample: Image.Resampling) -> np.ndarray:
    """``a: [H, W, ...]`` resized to ``size`` = (H', W'), channel by channel."""
    flat = a.reshape(*a.shape[:2], -1)
    out = [np.asarray(Image.fromarray(np.ascontiguousarray(flat[..., c]))
                      .resize(size[::-1], resample)) for c in range(flat.shape[-1])]
    return np.stack(out, -1).reshape(*size, *a.shape[2:]).astype(a.dtype)


def _tiles(a: np.ndarray, tile: int | None) -> np.ndarray:
    """``a: [H, W, ...]`` cut into [H // T * W // T, T, T, ...] tiles, row by row."""
    if tile is None:
        return a[None]
    nh, nw = a.shape[0] // tile, a.shape[1] // tile
    a = a[: nh * tile, : nw * tile].reshape(nh, tile, nw, tile, *a.shape[2:])
    return a.swapaxes(1, 2).reshape(nh * nw, tile, tile, *a.shape[4:])


def _split(n: int, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A random (train, test) split of ``range(n)``, test of size ceil(fraction * n)."""
    n_test = math.ceil(test_fraction * n)
    if n_test >= n:
        raise ValueError(f"cannot split {n} image(s) with `test_fraction` (={test_fraction}): "
                         "both the train and test sets need at least one image.")
    perm = np.random.default_rng(seed).permutation(n)
    return np.sort(perm[n_test:]), np.sort(perm[:n_test])


def load_segmentation_folder(data_dir: str | Path, *, size: tuple[int, int] | None = None,
                             tile: int | None = None, test_fraction: float = 0.2,
                             split_seed: int = 0) -> Dataset:
    """A binary segmentation data set from local image and mask files.

    Two layouts: ``images/`` and ``masks/`` subfolders whose files (PNG or TIFF) share
    stems, or ISBI-2012's multi-page ``train-volume.tif`` + ``train-labels.tif``. Each
    page of a file is one sample. Mask class 1 is a nonzero pixel in the folder layout
    and a pixel > 127 (cell; membrane is 0) in ISBI stacks.

    The split is by source image, before tiling, so no image has tiles on both sides.

    Args:
      data_dir: the folder holding either layout.
      size: (H, W) to resize to (bilinear for images, nearest for masks).
      tile: T, to cut each (resized) image into non-overlapping T x T tiles; the
        remainder at the bottom and right is dropped.
      test_fraction: the share of images held out for testing, in (0, 1).
      split_seed: the split's seed; the same seed gives the same split every call.

    Returns:
      Dataset with x: f32[S, H, W, C] in [0, 1] (C = 1 grey, 3 colour),
      y: i32[S, H, W] masks in {0, 1}, 2 classes.

    Raises:
      ValueError: a missing folder or file, an unreadable image, or an image and mask
        (or two images, without ``size`` or ``tile``) of different shapes.
    """
    if not 0 < test_fraction < 1:
        raise ValueError(f"`test_fraction` (={test_fraction}) must be in (0, 1).")
    if size is not None and (len(size) != 2 or min(size) < 1):
        raise ValueError(f"`size` (={size}) must be (H, W) with H, W >= 1.")
    if tile is not None and tile < 1:
        raise ValueError(f"`tile` (={tile}) must be >= 1.")
    pairs, half = _find_pairs(Path(data_dir))
    images, masks, names = [], [], []
    for image_file, mask_file in pairs:
        image_pages, mask_pages = _pages(image_file), _pages(mask_file)
        if len(image_pages) != len(mask_pages):
            raise ValueError(f"{mask_file} has {len(mask_pages)} page(s): expected "
                             f"{len(image_pages)}, as {image_file}.")
        for i, (ip, mp) in enumerate(zip(image_pages, mask_pages, strict=True)):
            x, m = _image(ip), _mask(mp, half)
            name = f"{image_file}" + (f" (page {i})" if len(image_pages) > 1 else "")
            if m.shape != x.shape[:2]:
                raise ValueError(f"mask {mask_file} has shape {m.shape}: expected "
                                 f"{x.shape[:2]}, the shape of image {name}.")
            if size is not None:
                x = _resize(x, tuple(size), Image.Resampling.BILINEAR)
                m = _resize(m, tuple(size), Image.Resampling.NEAREST)
            if tile is not None and min(m.shape) < tile:
                raise ValueError(f"`tile` (={tile}) must be <= the height and width "
                                 f"{m.shape} of image {name}.")
            if tile is None and masks and m.shape != masks[0].shape:
                raise ValueError(f"image {name} has shape {m.shape}: expected {masks[0].shape} "
                                 f"as {names[0]}; pass `size` or `tile` to mix shapes.")
            images.append(x)
            masks.append(m)
            names.append(name)
    channels = max(x.shape[-1] for x in images)  # grey images join colour ones as RGB
    images = [np.broadcast_to(x, (*x.shape[:2], channels)) for x in images]
    train, test = _split(len(images), test_fraction, split_seed)

    def stack(idx):
        x = np.concatenate([_tiles(images[i], tile) for i in idx]).astype(np.float32)
        y = np.concatenate([_tiles(masks[i], tile) for i in idx]).astype(np.int32)
        return x, y

    return Dataset(*stack(train), *stack(test), num_classes=2, name="segmentation")


def make_synthetic_segmentation(n: int = 256, size: int = 32, seed: int = 0,
                                test_fraction: float = 0.2) -> Dataset:
    """Random filled circles and rectangles (1-4 per image) on a noisy background.

    Shapes are brighter than the background by 0.3-0.6 on a random background level,
    with Gaussian noise (sigma 0.1) on top, so a small U-Net separates them. The
    first ``n - ceil(test_fraction * n)`` images are the training set.

    Args:
      n: the number of images, >= 2.
      size: their height and width, >= 8.
      seed: seed of ``np.random.default_rng``; the same seed gives the same data.
      test_fraction: the share of images held out for testing, in (0, 1).

    Returns:
      Dataset with x: f32[S, size, size, 1] in [0, 1], y: i32[S, size, size] (1 inside
      a shape), 2 classes.
    """
    if not 0 < test_fraction < 1:
        raise ValueError(f"`test_fraction` (={test_fraction}) must be in (0, 1).")
    if size < 8:
        raise ValueError(f"`size` (={size}) must be >= 8.")
    n_test = math.ceil(test_fraction * n)
    if not 0 < n_test < n:
        raise ValueError(f"`n` (={n}) must leave at least one image for training and one for "
                         f"testing with `test_fraction` (={test_fraction}).")
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[:size, :size]
    masks = np.zeros((n, size, size), bool)
    for mask in masks:
        for _ in range(rng.integers(1, 5)):
            cy, cx = rng.uniform(0, size, 2)
            if rng.random() < 0.5:
                r = rng.uniform(size / 10, size / 4)
                mask |= (rows - cy) ** 2 + (cols - cx) ** 2 <= r**2
            else:
                hh, hw = rng.uniform(size / 12, size / 4, 2)
                mask |= (np.abs(rows - cy) <= hh) & (np.abs(cols - cx) <= hw)
    background = rng.uniform(0.1, 0.4, (n, 1, 1))
    contrast = rng.uniform(0.3, 0.6, (n, 1, 1))
    x = background + contrast * masks + rng.normal(0, 0.1, masks.shape)
    x = np.clip(x, 0, 1).astype(np.float32)[..., None]
    y = masks.astype(np.int32)
    k = n - n_test
    return Dataset(x[:k], y[:k], x[k:], y[k:], num_classes=2, name="synthetic-seg")
