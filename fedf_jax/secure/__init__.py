"""Input privacy for every layer (DESIGN §8, "A shield for each layer").

- :mod:`fedf_jax.secure.secagg`: secure aggregation of u32/u64 vectors between workers and
  their master (Bonawitz et al. 2017): masks that cancel in the sum, dropouts recovered
  from Shamir shares.
- :mod:`fedf_jax.secure.paillier`: packed Paillier encryption of group sums on their way to
  the top master (Paillier 1999; Phong et al. 2018). Needs the ``secure`` extra (gmpy2).
- :mod:`fedf_jax.secure.aead`: authenticated encryption of codec frames on every link, with
  replay, reorder and misdirection checks.

Nothing is imported here, so ``import fedf_jax.secure`` works without gmpy2.
"""
