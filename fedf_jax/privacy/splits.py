"""How an attacked federation's data is split and which recipes an experiment sweeps: the
public auxiliary set, the workers' shares (the victim's planted, forced or cut), and the
(n_k, local epochs, batch) cells."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from fedf_jax.data import partition
from fedf_jax.privacy.common import Options

AUX_FRACTION = 0.25  # share of the training set kept back as public auxiliary data


def split_indices(labels: np.ndarray, n_workers: int, seed: int, *, scheme: str = "iid",
                  alpha: float = 0.5, victim_size: int = 0,
                  victim_classes: Sequence[int] | None = None, forced_victim: bool = False
                  ) -> tuple[np.ndarray, list[np.ndarray]]:
    """(aux, parts): training-set indices of the public auxiliary data and of each worker.

    The auxiliary set (``AUX_FRACTION`` of the samples) is drawn first; the workers
    share the rest. The victim (worker 0) gets, by priority: nothing here when its
    data is forced (``forced_victim``; the others split the whole pool); otherwise
    samples of ``victim_classes`` only (``victim_size`` of them, or a 1/N share of the
    pool, at most what the classes hold) with the others splitting the rest; otherwise
    its share of the partition, cut to ``victim_size`` when that is > 0.

    Returns:
      (i64[A], N arrays i64[S_k]), all disjoint.
    """
    labels = np.asarray(labels)
    rng = np.random.default_rng([seed, 0x5EED])
    perm = rng.permutation(len(labels))
    n_aux = int(round(AUX_FRACTION * len(labels)))
    aux, pool = np.sort(perm[:n_aux]), perm[n_aux:]
    planted = victim_classes is not None and len(victim_classes) > 0
    if forced_victim or planted:
        if forced_victim:
            victim = np.zeros(0, np.int64)
        else:
            allowed = np.flatnonzero(np.isin(labels[pool], np.asarray(victim_classes)))
            if allowed.size == 0:
                raise ValueError(f"`victim_classes` (={list(victim_classes)}) holds no "
                                 f"training sample; use labels present in the data.")
            want = victim_size if victim_size > 0 else len(pool) // n_workers
            victim = pool[allowed[:want]]
        rest = np.setdiff1d(pool, victim)
        rest = rng.permutation(rest)
        others = partition(labels[rest], n_workers - 1, scheme, seed=seed, alpha=alpha)
        return aux, [victim.astype(np.int64)] + [rest[p] for p in others]
    parts = [pool[p] for p in partition(labels[pool], n_workers, scheme, seed=seed,
                                        alpha=alpha)]
    if victim_size > 0:
        parts[0] = parts[0][:victim_size]
    return aux, parts


def recipe_cells(opts: Options, n_local: Sequence[int], sweep_at: Sequence[int]
                 ) -> list[tuple[int, int, int]]:
    """(n_k, local epochs, batch) cells of an experiment's sweep.

    Every n_k in ``n_local`` runs the base recipe (the first of ``opts.local_epochs``,
    batch 8 if ``opts.batch_sizes`` holds it, else its first); at each n_k of
    ``sweep_at`` the local epochs and then the batch sizes of ``opts`` are swept one
    at a time around the base. A batch size that cannot differ from the base's for
    n_k samples (both >= n_k: one full batch either way) is left out.

    Returns:
      The cells in order, without repeats.
    """
    e0 = opts.local_epochs[0]
    b0 = 8 if 8 in opts.batch_sizes else opts.batch_sizes[0]
    cells = [(n, e0, b0) for n in n_local]
    for n in sweep_at:
        cells += [(n, e, b0) for e in opts.local_epochs]
        cells += [(n, e0, b) for b in opts.batch_sizes
                  if n <= 0 or min(b, n) != min(b0, n)]
    return list(dict.fromkeys(cells))


def recipe_label(n_k: int, local_epochs: int, batch: int) -> str:
    """``"n_k=16 E=1 B=8"`` (``n_k=all`` for 0)."""
    return f"n_k={n_k or 'all'} E={local_epochs} B={batch}"


__all__ = ["AUX_FRACTION", "split_indices", "recipe_cells", "recipe_label"]
