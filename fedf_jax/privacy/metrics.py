"""How close a reconstruction is to the private data (host numpy).

For 8x8 digits, LPIPS and CW-SSIM do not apply (PRIVACY-ANCHORS §1.1), so the
scores are PSNR, plain SSIM, IIP-pixel and label accuracy. Images are in [0, 1];
reconstructions are clipped to [0, 1] before scoring, as breaching does. A batch
of reconstructions comes in no particular order: :func:`match` pairs it with the
true batch (Hungarian assignment on the pixel MSE; breaching uses LPIPS) before
the per-image scores are averaged.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
from scipy.optimize import linear_sum_assignment
from skimage.metrics import structural_similarity

PSNR_CAP_DB = 100.0  # an exact reconstruction (MSE below 1e-10) scores this, not inf


def _images(a: npt.ArrayLike) -> np.ndarray:
    """f64 copy clipped to [0, 1]."""
    return np.clip(np.asarray(a, np.float64), 0.0, 1.0)


def mse(recon: npt.ArrayLike, true: npt.ArrayLike) -> np.ndarray:
    """Per-image mean squared error after clipping to [0, 1].

    Args:
      recon, true: f[B, ...] image batches of one shape.

    Returns:
      f64[B].
    """
    r, t = _images(recon), _images(true)
    if r.shape != t.shape:
        raise ValueError(f"`recon` {r.shape} and `true` {t.shape} must have the same shape.")
    return ((r - t) ** 2).reshape(len(r), -1).mean(axis=1)


def psnr(recon: npt.ArrayLike, true: npt.ArrayLike) -> np.ndarray:
    """Per-image PSNR = 10 log10(1 / MSE) in dB, images in [0, 1], capped at
    ``PSNR_CAP_DB``.

    Returns:
      f64[B].
    """
    return np.minimum(10.0 * np.log10(1.0 / np.maximum(mse(recon, true), 1e-10)), PSNR_CAP_DB)


def ssim(recon: npt.ArrayLike, true: npt.ArrayLike) -> np.ndarray:
    """Per-image SSIM (scikit-image, ``data_range=1``).

    Images are f[B, H, W, C]. The window is 7 pixels, or 3 for images smaller than
    16 pixels a side: on 8x8 digits a 7-pixel window leaves only 2x2 valid positions.

    Returns:
      f64[B].
    """
    r, t = _images(recon), _images(true)
    if r.shape != t.shape or r.ndim != 4:
        raise ValueError(f"`recon` {r.shape} and `true` {t.shape} must both be [B, H, W, C].")
    win = 3 if min(r.shape[1:3]) < 16 else 7
    return np.array([structural_similarity(a, b, data_range=1.0, win_size=win, channel_axis=-1)
                     for a, b in zip(r, t, strict=True)])


def match(recon: npt.ArrayLike, true: npt.ArrayLike) -> np.ndarray:
    """The order of ``recon`` that best pairs it with ``true`` (least total MSE).

    Args:
      recon: f[R, ...] reconstructions (R may differ from B).
      true: f[B, ...] the true images.

    Returns:
      i64[B] ``idx`` with ``recon[idx[i]]`` paired with ``true[i]``; -1 where there are
      fewer reconstructions than images and ``true[i]`` got none.
    """
    r = _images(recon).reshape(len(recon), -1)
    t = _images(true).reshape(len(true), -1)
    cost = ((t[:, None, :] - r[None, :, :]) ** 2).mean(axis=-1)
    rows, cols = linear_sum_assignment(cost)
    idx = np.full(len(t), -1, np.int64)
    idx[rows] = cols
    return idx


def iip_pixel(recon: npt.ArrayLike, true: npt.ArrayLike, distractors: list[np.ndarray]
              ) -> np.ndarray:
    """Image identifiability (Yin et al.), pixel version: whether each reconstruction's
    nearest neighbour (L2) among the candidate images with the true image's label is the
    true image.

    Args:
      recon: f[B, ...] reconstructions, paired with ``true``.
      true: f[B, ...] the true images.
      distractors: for each image, f[D_i, ...] the other candidates with its label.

    Returns:
      bool[B]. Chance level for image i is 1 / (D_i + 1).
    """
    r = _images(recon).reshape(len(recon), -1)
    t = _images(true).reshape(len(true), -1)
    hits = np.zeros(len(t), bool)
    for i, d in enumerate(distractors):
        d = _images(d).reshape(len(d), -1)
        to_true = np.sum((r[i] - t[i]) ** 2)
        hits[i] = len(d) == 0 or to_true < np.min(np.sum((d - r[i]) ** 2, axis=1))
    return hits


def label_accuracy(predicted: npt.ArrayLike, true: npt.ArrayLike) -> float:
    """Multiset overlap of predicted and true labels, over the number of true labels."""
    p, t = np.asarray(predicted, np.int64).ravel(), np.asarray(true, np.int64).ravel()
    if t.size == 0:
        raise ValueError("`true` holds no labels.")
    n = max(int(p.max(initial=0)), int(t.max(initial=0))) + 1
    return float(np.minimum(np.bincount(p, minlength=n), np.bincount(t, minlength=n)).sum()
                 / t.size)


def same_label_distractors(true_x: np.ndarray, true_y: np.ndarray, pool_x: np.ndarray,
                           pool_y: np.ndarray) -> list[np.ndarray]:
    """For each true image, the candidate images with its label: the pool's and the
    other true images' (the true image itself excluded)."""
    out = []
    for i, label in enumerate(true_y):
        others = np.delete(np.arange(len(true_y)), i)
        out.append(np.concatenate([pool_x[pool_y == label],
                                   true_x[others][true_y[others] == label]]))
    return out


def scores(recon: np.ndarray, true_x: np.ndarray, true_y: np.ndarray, pool_x: np.ndarray,
           pool_y: np.ndarray) -> dict[str, float]:
    """Mean PSNR, SSIM and IIP of a batch of reconstructions after :func:`match`.

    A true image left without a reconstruction (fewer outputs than images) scores
    the PSNR/SSIM of a blank image and an IIP miss.

    Returns:
      {"psnr_db", "ssim", "iip", "iip_chance"}.
    """
    idx = match(recon, true_x) if len(recon) else np.full(len(true_x), -1)
    blank = np.zeros_like(true_x[:1])
    paired = np.concatenate([recon[i:i + 1] if i >= 0 else blank for i in idx])
    distract = same_label_distractors(true_x, true_y, pool_x, pool_y)
    hit = iip_pixel(paired, true_x, distract) & (idx >= 0)
    return {"psnr_db": float(psnr(paired, true_x).mean()),
            "ssim": float(ssim(paired, true_x).mean()), "iip": float(hit.mean()),
            "iip_chance": float(np.mean([1.0 / (len(d) + 1) for d in distract]))}
