"""The rules of a run's configuration that span its sections (``RunConfig`` calls
:func:`check` once its sections have checked their own fields). No JAX."""

from __future__ import annotations

from fedf_jax import schedule


def check(cfg) -> None:
    """Raises ValueError, naming the values and the fix, when the sections of a
    ``RunConfig`` do not fit together."""
    data, run, n = cfg.data, cfg.run, cfg.workers.count
    if data.standardize is not None and data.name not in ("libsvm", "breast-cancer"):
        raise ValueError(f"`standardize` applies to data 'libsvm' and 'breast-cancer' "
                         f"(got data {data.name!r}).")
    if data.partition == "sizes" and len(data.sizes) != n:
        raise ValueError(f"`partition='sizes'` needs `sizes` with {n} values, "
                         f"got {list(data.sizes)}.")
    if data.sizes is not None and data.partition != "sizes":
        raise ValueError(f"`sizes` applies to `partition='sizes'` (got partition "
                         f"{data.partition!r}).")
    cfg.master.betas(n)  # one beta or one per worker
    if run.devices is not None and run.backend != "sharded":
        raise ValueError(f"`devices` (={run.devices}) needs `backend='sharded'`.")
    if run.fraction < 1 and run.algorithm != "fedavg":
        raise ValueError(f"`fraction` (={run.fraction}) applies to "
                         "`algorithm='fedavg'` only.")
    if run.algorithm != "fedf" and run.backend != "vmap":
        raise ValueError(f"`backend` (={run.backend!r}) applies to `algorithm='fedf'`; "
                         f"the {run.algorithm} baseline runs on the vmap backend.")
    cfg.group_workers()  # checks --groups against the workers
    if run.groups > 1 and run.fraction < 1:
        raise ValueError(f"`fraction` (={run.fraction}) applies to one level; with "
                         f"`groups` (={run.groups}) every worker takes part.")
    if cfg.master.secure_sum == "paillier" and run.groups < 2:
        raise ValueError("`secure_sum='paillier'` encrypts the groups' sums to the top: it "
                         f"needs `groups` >= 2 (got {run.groups}).")
    if cfg.master.secure_sum != "none" and run.algorithm not in ("fedf", "admm-svm"):
        raise ValueError(f"`secure_sum` (={cfg.master.secure_sum!r}) applies to fedf and "
                         f"admm-svm, not {run.algorithm!r}.")
    if run.key_file is not None and run.wire != "aead":
        raise ValueError(f"`key_file` (={run.key_file!r}) needs `wire='aead'`.")
    if run.worker_chunk is not None:
        _check_worker_chunk(cfg)
    if data.split == "features" and (run.algorithm != "admm-svm" or run.groups > 1):
        raise ValueError("`split='features'` applies to `algorithm='admm-svm'` with one "
                         f"level (got algorithm {run.algorithm!r}, groups {run.groups}).")
    if cfg.master.pilot_guard and (run.algorithm != "fedf" or run.worker_chunk is not None
                                   or run.schedule != "sync"):
        raise ValueError("`pilot_guard` guards FEDF's synchronous pilot choice, whose bands "
                         "need every worker's cost before the pilot is chosen (got algorithm "
                         f"{run.algorithm!r}, worker_chunk {run.worker_chunk}, schedule "
                         f"{run.schedule!r}); drop --pilot-guard or those flags.")
    schedule.check(cfg)


def _check_worker_chunk(cfg) -> None:
    """``--worker-chunk`` streams fedf and fedavg workers on the vmap backend without a
    secure sum (under ``--schedule async`` inside groups only: a flat asynchronous
    sender's model is its own update), and admm-svm's synchronous samples split."""
    run, secure, sync = cfg.run, cfg.master.secure_sum, cfg.run.schedule == "sync"
    if run.algorithm == "admm-svm":
        ok = cfg.data.split == "samples" and sync
    else:
        ok = (run.algorithm in ("fedf", "fedavg") and run.backend == "vmap"
              and secure == "none" and (sync or run.groups > 1))
    if not ok:
        raise ValueError(f"`worker_chunk` (={run.worker_chunk}) streams fedf and fedavg "
                         "workers on the vmap backend without a secure sum (asynchronous: "
                         "inside groups), and admm-svm's synchronous samples split (got "
                         f"algorithm {run.algorithm!r}, backend {run.backend!r}, secure_sum "
                         f"{secure!r}, split {cfg.data.split!r}, schedule {run.schedule!r}, "
                         f"groups {run.groups}); drop --worker-chunk.")


__all__ = ["check"]
