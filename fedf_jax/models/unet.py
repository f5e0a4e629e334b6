"""The U-Net of Ronneberger et al. 2015 ([7] in the FEDF paper), with 'same' padding.

Encoder: ``depth`` levels of two 3x3 conv + BN + ReLU and a 2x2 max-pool, on
width, 2 width, ..., 2^(depth-1) width channels; a bottleneck of two 3x3 convs on
2^depth width channels (64 -> 1024 for width 64, depth 4). Decoder: per level a
2x2 transposed conv (stride 2) halving the channels, concatenation with the skip,
two 3x3 conv + BN + ReLU. A final 1x1 conv gives ``num_classes`` logits per pixel.

Departures from the 2015 paper: 'same' padding, as the FEDF paper states ("We
also applied padding for the convolution operations in U-Net"), so there is no
cropping and the output has the input's H and W; and batch norm after every 3x3
conv (``batch_norm=True``, the default), which the 2015 paper predates. With batch
norm the 3x3 convs have no bias (BN's bias replaces it); without it they have one.

For width 64, depth 4, 1 input channel, 2 classes (the MEMBRANE set-up):
31,036,546 ``nnx.Param`` values with batch norm (124.15 MB = 118.40 MiB in
float32), plus 11,776 ``nnx.BatchStat`` values (running means and variances);
31,030,658 without batch norm (124.12 MB = 118.37 MiB), the 2015 paper's layers.
The FEDF paper gives V = 138.1 MB for its TensorFlow U-Net instance; it does not
list that model's layers, so the two need not match.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

# Ronneberger et al. 2015, section 3: Gaussian weights with std sqrt(2 / N), N = fan-in
# (a plain Gaussian; jax's he_normal is truncated).
_KERNEL_INIT = nnx.initializers.variance_scaling(2.0, "fan_in", "normal")


class DoubleConv(nnx.Module):
    """[3x3 conv ('same') -> BN -> ReLU] x 2.

    Args:
      cin: input channels.
      cout: output channels.
      batch_norm: add BN after each conv (and drop the conv bias).
    """

    def __init__(self, cin: int, cout: int, *, batch_norm: bool, rngs: nnx.Rngs):
        def conv(a: int, b: int) -> nnx.Conv:
            return nnx.Conv(a, b, (3, 3), padding="SAME", use_bias=not batch_norm,
                            kernel_init=_KERNEL_INIT, rngs=rngs)

        def norm(c: int) -> nnx.BatchNorm | None:
            if not batch_norm:
                return None
            return nnx.BatchNorm(c, momentum=0.9, epsilon=1e-5, rngs=rngs)

        self.conv1, self.bn1 = conv(cin, cout), norm(cout)
        self.conv2, self.bn2 = conv(cout, cout), norm(cout)

    def __call__(self, x: jax.Array, *, mask: jax.Array | None = None) -> jax.Array:
        """``f32[B, H, W, cin] -> f32[B, H, W, cout]``.

        ``mask``: ``bool[B, 1, 1, 1]`` rows that count in the batch statistics, or None.
        """
        for conv, bn in ((self.conv1, self.bn1), (self.conv2, self.bn2)):
            x = conv(x)
            if bn is not None:
                x = bn(x, mask=mask)
            x = jax.nn.relu(x)
        return x


class UNet(nnx.Module):
    """U-Net for per-pixel classification (Ronneberger et al. 2015, Fig. 1; 'same' padding).

    Args:
      input_shape: ``(H, W, channels)``; H and W divisible by ``2**depth``, e.g.
        ``(512, 512, 1)`` for MEMBRANE.
      num_classes: C, logits per pixel.
      width: channels of the first level (64 in the paper; e.g. 4 for tests).
      depth: number of 2x2 max-pools (4 in the paper).
      batch_norm: BN after every 3x3 conv.
    """

    def __init__(self, input_shape: tuple[int, ...], num_classes: int, *,
                 width: int = 64, depth: int = 4, batch_norm: bool = True, rngs: nnx.Rngs):
        if len(input_shape) != 3:
            raise ValueError(f"`input_shape` (={input_shape}) must be (H, W, channels).")
        if depth < 1:
            raise ValueError(f"`depth` (={depth}) must be >= 1.")
        if width < 1:
            raise ValueError(f"`width` (={width}) must be >= 1.")
        h, w, c = input_shape
        if h % 2**depth or w % 2**depth:
            raise ValueError(f"`input_shape` (={input_shape}) must have H and W divisible by "
                             f"2**depth (={2**depth}).")
        chans = [width * 2**i for i in range(depth + 1)]
        self.down = nnx.List([
            DoubleConv(a, b, batch_norm=batch_norm, rngs=rngs)
            for a, b in zip([c, *chans[:-2]], chans[:-1], strict=True)
        ])
        self.bottleneck = DoubleConv(chans[-2], chans[-1], batch_norm=batch_norm, rngs=rngs)
        # Decoder, from the deepest level up; up[i] maps chans[i + 1] -> chans[i].
        self.up = nnx.List([
            nnx.ConvTranspose(chans[i + 1], chans[i], (2, 2), strides=(2, 2),
                              kernel_init=_KERNEL_INIT, rngs=rngs)
            for i in reversed(range(depth))
        ])
        self.dec = nnx.List([
            DoubleConv(2 * chans[i], chans[i], batch_norm=batch_norm, rngs=rngs)
            for i in reversed(range(depth))
        ])
        self.out = nnx.Conv(width, num_classes, (1, 1), kernel_init=_KERNEL_INIT, rngs=rngs)

    def __call__(self, x: jax.Array, *, mask: jax.Array | None = None) -> jax.Array:
        """``f32[B, H, W, channels] -> f32[B, H, W, C]`` logits.

        Args:
          x: a batch of images.
          mask: ``bool[B]``, the rows that count in train-mode batch statistics (padding
            rows are False); None counts every row. Ignored in eval mode or without BN.
        """
        m = None if mask is None else jnp.reshape(mask, (-1, 1, 1, 1))
        skips = []
        for block in self.down:
            x = block(x, mask=m)
            skips.append(x)
            x = nnx.max_pool(x, (2, 2), strides=(2, 2))
        x = self.bottleneck(x, mask=m)
        for up, block, skip in zip(self.up, self.dec, reversed(skips), strict=True):
            x = block(jnp.concatenate([skip, up(x)], axis=-1), mask=m)
        return self.out(x)
