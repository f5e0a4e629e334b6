"""One host, one device: every worker's rows on the default device, trained by one
``vmap`` per cohort inside the algorithm's jitted epoch (the simulator's default)."""

from __future__ import annotations

import jax

from fedf_jax.layout import Placement


def placement() -> Placement:
    """Rows and everything else on the default device; code runs over them as it is."""
    return Placement("vmap", devices=(str(jax.devices()[0]),))


__all__ = ["placement"]
