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
    if run.worker_chunk is not None and (run.algorithm not in ("fedf", "fedavg")
                                         or run.backend != "vmap"
                                         or cfg.master.secure_sum != "none"):
        raise ValueError(f"`worker_chunk` (={run.worker_chunk}) streams fedf and fedavg "
                         "workers on the vmap backend without a secure sum (got "
                         f"algorithm {run.algorithm!r}, backend {run.backend!r}, "
                         f"secure_sum {cfg.master.secure_sum!r}); drop --worker-chunk.")
    if data.split == "features" and (run.algorithm != "admm-svm" or run.groups > 1):
        raise ValueError("`split='features'` applies to `algorithm='admm-svm'` with one "
                         f"level (got algorithm {run.algorithm!r}, groups {run.groups}).")
    schedule.check(cfg)


__all__ = ["check"]
