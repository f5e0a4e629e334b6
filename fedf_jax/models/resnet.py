"""The CIFAR ResNet of He et al. 2016, section 4.2 (ResNet-32 in the FEDF paper, [6]).

A 3x3 conv(16) + BN + ReLU, three stages of n = (depth - 2) / 6 basic blocks on
16, 32 and 64 channels (feature maps 32, 16, 8 on CIFAR-10), global average
pooling and a dense layer: 6n + 2 weighted layers.

Shortcuts are option A of the paper: identity, and at the first block of stages 2
and 3 a strided subsample (``x[:, ::2, ::2]``) with zero channel padding, so the
shortcuts have no parameters. This is the paper's CIFAR choice and gives the
commonly quoted counts. Convs have no bias (BN follows). For depth 32 and 10
classes the model has 464,154 ``nnx.Param`` values (461,232 conv weights, 2,272 BN
scales and biases, 650 in the dense layer) and 2,272 ``nnx.BatchStat`` values
(running means and variances). 464,154 float32 values are 1.86 MB (1.77 MiB); the
FEDF paper gives V = 1.8 MB for its ResNet-32 instance.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

# He et al. 2016 initialise weights "as in [13]" (He et al. 2015): N(0, 2 / fan_in), a plain
# Gaussian (jax's he_normal is truncated).
_KERNEL_INIT = nnx.initializers.variance_scaling(2.0, "fan_in", "normal")


def _conv3x3(cin: int, cout: int, stride: int, rngs: nnx.Rngs) -> nnx.Conv:
    # Explicit padding 1 (not 'SAME'): with stride 2, 'SAME' pads (0, 1) and centres
    # output i on input 2i + 1, while the option A shortcut takes input 2i. Padding 1
    # on both sides centres it on 2i, as reference implementations (padding=1) do.
    return nnx.Conv(cin, cout, (3, 3), strides=stride, padding=1, use_bias=False,
                    kernel_init=_KERNEL_INIT, rngs=rngs)


def _bn(features: int, rngs: nnx.Rngs) -> nnx.BatchNorm:
    return nnx.BatchNorm(features, momentum=0.9, epsilon=1e-5, rngs=rngs)


class BasicBlock(nnx.Module):
    """conv3x3 -> BN -> ReLU -> conv3x3 -> BN, plus shortcut, -> ReLU (He et al. 2016, Fig. 2).

    Args:
      cin: input channels.
      cout: output channels (``cout >= cin``).
      stride: 1, or 2 to halve H and W.
    """

    def __init__(self, cin: int, cout: int, stride: int, *, rngs: nnx.Rngs):
        self.conv1 = _conv3x3(cin, cout, stride, rngs)
        self.bn1 = _bn(cout, rngs)
        self.conv2 = _conv3x3(cout, cout, 1, rngs)
        self.bn2 = _bn(cout, rngs)
        self.stride = stride
        self.pad = cout - cin

    def __call__(self, x: jax.Array, *, mask: jax.Array | None = None) -> jax.Array:
        """``f32[B, H, W, cin] -> f32[B, ceil(H / stride), ceil(W / stride), cout]``.

        ``mask``: ``bool[B, 1, 1, 1]`` rows that count in the batch statistics, or None.
        """
        y = jax.nn.relu(self.bn1(self.conv1(x), mask=mask))
        y = self.bn2(self.conv2(y), mask=mask)
        # Option A shortcut: subsample, then append zero channels (no parameters). Some
        # implementations pad on both sides; that only permutes channels.
        s = x[:, ::self.stride, ::self.stride, :]
        if self.pad:
            s = jnp.pad(s, ((0, 0), (0, 0), (0, 0), (0, self.pad)))
        return jax.nn.relu(y + s)


class ResNet(nnx.Module):
    """CIFAR ResNet-(6n + 2) with option A shortcuts (He et al. 2016, section 4.2).

    Args:
      input_shape: ``(H, W, channels)``, e.g. ``(32, 32, 3)``.
      num_classes: C.
      depth: 6n + 2 weighted layers: 20, 32 (the FEDF paper), 44, 56, 110, ...
      widths: channels of the three stages, non-decreasing (zero padding can only
        add channels).
    """

    def __init__(self, input_shape: tuple[int, ...], num_classes: int, *,
                 depth: int = 32, widths: tuple[int, ...] = (16, 32, 64), rngs: nnx.Rngs):
        if len(input_shape) != 3:
            raise ValueError(f"`input_shape` (={input_shape}) must be (H, W, channels).")
        if depth < 8 or (depth - 2) % 6 != 0:
            raise ValueError(f"`depth` (={depth}) must be 6n + 2 for n >= 1 (20, 32, 44, ...).")
        if len(widths) != 3 or any(b < a for a, b in zip(widths[:-1], widths[1:], strict=True)):
            raise ValueError(f"`widths` (={widths}) must be three non-decreasing channel counts.")
        n = (depth - 2) // 6
        self.conv = _conv3x3(input_shape[-1], widths[0], 1, rngs)
        self.bn = _bn(widths[0], rngs)
        blocks = []
        cin = widths[0]
        for stage, cout in enumerate(widths):
            for i in range(n):
                stride = 2 if stage > 0 and i == 0 else 1
                blocks.append(BasicBlock(cin, cout, stride, rngs=rngs))
                cin = cout
        self.blocks = nnx.List(blocks)
        self.out = nnx.Linear(widths[-1], num_classes, rngs=rngs)

    def __call__(self, x: jax.Array, *, mask: jax.Array | None = None) -> jax.Array:
        """``f32[B, H, W, channels] -> f32[B, C]`` logits.

        Args:
          x: a batch of images.
          mask: ``bool[B]``, the rows that count in train-mode batch statistics (padding
            rows are False); None counts every row. Ignored in eval mode.
        """
        m = None if mask is None else jnp.reshape(mask, (-1, 1, 1, 1))
        x = jax.nn.relu(self.bn(self.conv(x), mask=m))
        for block in self.blocks:
            x = block(x, mask=m)
        return self.out(jnp.mean(x, axis=(1, 2)))
