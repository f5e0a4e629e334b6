"""ResNet (He et al. 2016) and U-Net (Ronneberger et al. 2015): shapes, counts, BatchNorm."""

import re
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from fedf_jax.models.resnet import ResNet
from fedf_jax.models.unet import UNet

# On a small CPU every new op shape costs a compile (an eager threefry init: ~2 s per
# parameter shape). So full-size shapes and counts go through eval_shape (nothing is
# allocated or run); the two small models get their values from numpy; and they run through
# two jitted pure functions, compiled once per model: a training step and an inference
# forward pass (split/merge, as fedf_jax passes models).
RESNET_X, UNET_X = (4, 8, 8, 3), (2, 8, 12, 1)


def _numpy_init(make, seed: int = 0) -> nnx.Module:
    """``make()``'s module, its values drawn with numpy (He-normal kernels, fresh BN stats)."""
    model = nnx.eval_shape(make)
    rng = np.random.default_rng(seed)

    def value(path, s):
        name = path[-2].key  # the Variable's attribute; path[-1] is its `.value`
        if name in ("var", "scale"):
            return jnp.ones(s.shape, s.dtype)
        if name == "mean":
            return jnp.zeros(s.shape, s.dtype)
        std = np.sqrt(2.0 / np.prod(s.shape[:-1])) if len(s.shape) > 1 else 0.1
        return jnp.asarray(std * rng.standard_normal(s.shape), s.dtype)

    nnx.update(model, jax.tree_util.tree_map_with_path(value, nnx.state(model)))
    return model


def _batch(shape: tuple[int, ...], seed: int = 1) -> jax.Array:
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), jnp.float32)


def _count(model: nnx.Module, kind) -> int:
    return sum(int(x.size) for x in jax.tree.leaves(nnx.state(model, kind)))


def _out_shape(model: nnx.Module, x_shape: tuple[int, ...]) -> tuple[int, ...]:
    """Output shape of a forward pass, traced abstractly (works on eval_shape models)."""
    graphdef, state = nnx.split(model)
    fwd = lambda s, x: nnx.merge(graphdef, s, copy=True)(x)
    return jax.eval_shape(fwd, state, jax.ShapeDtypeStruct(x_shape, jnp.float32)).shape


def _unet_count(c: int, k: int, width: int, depth: int, batch_norm: bool) -> int:
    """Parameters of the U-Net, layer by layer (no flax)."""
    chans = [width * 2**i for i in range(depth + 1)]

    def double_conv(a: int, b: int) -> int:
        # Two 3x3 convs; with BN a scale and a bias per channel per BN and no conv bias.
        return 9 * a * b + 9 * b * b + (4 * b if batch_norm else 2 * b)

    n = sum(double_conv(a, b) for a, b in zip([c, *chans[:-2]], chans[:-1], strict=True))
    n += double_conv(chans[-2], chans[-1])
    for i in range(depth):
        n += 4 * chans[i + 1] * chans[i] + chans[i]  # 2x2 transposed conv with bias
        n += double_conv(2 * chans[i], chans[i])
    return n + width * k + k  # 1x1 conv


@jax.jit
def _train_step(graphdef, params, rest, x, mask):
    """Train mode: ``(d loss / d params, logits, BatchStats after the pass)``."""

    def loss(p):
        # copy=True: `rest` is not differentiated, so merge would reuse its Variables, made
        # outside jax.grad's trace, and the BatchStat update would raise TraceContextError.
        model = nnx.merge(graphdef, p, rest, copy=True)
        logits = model(x, mask=mask)
        labels = jnp.zeros(logits.shape[:-1], jnp.int32)
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
        return ce, (logits, nnx.state(model, nnx.BatchStat))

    grads, (logits, stats) = jax.grad(loss, has_aux=True)(params)
    return grads, logits, stats


@jax.jit
def _forward(graphdef, state, x):
    """Eval mode (set on the module before the split): ``(logits, BatchStats after)``."""
    model = nnx.merge(graphdef, state, copy=True)
    return model(x), nnx.state(model, nnx.BatchStat)


class Small(NamedTuple):
    graphdef: nnx.GraphDef  # train mode
    params: nnx.State
    rest: nnx.State  # BatchStats
    eval_graphdef: nnx.GraphDef
    x_shape: tuple[int, ...]

    def train(self, x, mask=None):
        mask = jnp.ones(x.shape[0], bool) if mask is None else jnp.asarray(mask)
        return _train_step(self.graphdef, self.params, self.rest, x, mask)

    def eval(self, x, stats=None):
        stats = self.rest if stats is None else stats
        return _forward(self.eval_graphdef, nnx.merge_state(self.params, stats), x)


def _small(model: nnx.Module, x_shape: tuple[int, ...]) -> Small:
    model.train()
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    model.eval()
    return Small(graphdef, params, rest, nnx.graphdef(model), x_shape)


@pytest.fixture(scope="module")
def built() -> dict[str, Small]:
    # ResNet-8 has ResNet-32's layer shapes (same widths), only fewer blocks.
    resnet = _numpy_init(lambda: ResNet(RESNET_X[1:], 10, depth=8, rngs=nnx.Rngs(0)))
    unet = _numpy_init(lambda: UNet(UNET_X[1:], 2, width=4, depth=2, rngs=nnx.Rngs(0)))
    return {"resnet": _small(resnet, RESNET_X), "unet": _small(unet, UNET_X)}


@pytest.fixture(params=["resnet", "unet"])
def small(request, built) -> Small:
    return built[request.param]


# Published counts (bias-free convs, option A shortcuts, BN scale and bias, dense with bias).
@pytest.mark.parametrize("depth,expected", [(20, 269_722), (32, 464_154), (44, 658_586)])
def test_resnet_param_count_matches_published(depth, expected):
    model = nnx.eval_shape(lambda: ResNet((32, 32, 3), 10, depth=depth, rngs=nnx.Rngs(0)))
    assert _count(model, nnx.Param) == expected


def test_resnet32_has_a_mean_and_a_var_per_bn_channel():
    model = nnx.eval_shape(lambda: ResNet((32, 32, 3), 10, rngs=nnx.Rngs(0)))
    # BN channels: 16 (stem) + 10 x 16 + 10 x 32 + 10 x 64 = 1,136.
    assert _count(model, nnx.BatchStat) == 2 * 1_136


@pytest.mark.parametrize("depth,hw", [(32, (32, 32)), (8, (7, 7)), (8, (9, 6))])
def test_resnet_output_shape(depth, hw):
    # Odd sizes: the stride-2 conv (padding 1) and the x[:, ::2, ::2] shortcut must agree.
    model = nnx.eval_shape(lambda: ResNet((*hw, 3), 10, depth=depth, rngs=nnx.Rngs(0)))
    assert _out_shape(model, (2, *hw, 3)) == (2, 10)


def test_small_resnet_forward_is_finite(built):
    m = built["resnet"]
    y, _ = m.eval(_batch(m.x_shape))
    assert y.shape == (m.x_shape[0], 10)
    assert bool(jnp.all(jnp.isfinite(y)))


def test_resnet_init_is_plain_he_normal():
    # rbg keys: an eager threefry init compiles ~2 s per parameter shape on a small CPU.
    rngs = nnx.Rngs(params=jax.random.key(0, impl="rbg"))
    model = ResNet((8, 8, 3), 10, depth=8, widths=(16, 16, 16), rngs=rngs)
    assert model.conv.bias is None
    kernels = [b.conv2.kernel[...] for b in model.blocks]  # 3x3x16x16, fan-in 144
    k = np.concatenate([np.asarray(x).ravel() for x in kernels])
    std = np.sqrt(2.0 / 144)
    np.testing.assert_allclose(k.std(), std, rtol=0.05)
    assert abs(k.mean()) < 0.05 * std
    assert np.abs(k).max() > 2.5 * std  # N(0, 2 / fan_in) as in He et al., not truncated at 2 std


@pytest.mark.parametrize("depth", [0, 2, 31, 33])
def test_resnet_depth_not_6n_plus_2_raises(depth):
    with pytest.raises(ValueError, match=re.escape(f"`depth` (={depth})")):
        ResNet((8, 8, 3), 10, depth=depth, rngs=nnx.Rngs(0))


def test_resnet_decreasing_widths_raise():
    with pytest.raises(ValueError, match="widths"):
        ResNet((8, 8, 3), 10, depth=8, widths=(16, 8, 4), rngs=nnx.Rngs(0))


def test_unet64_param_count():
    model = nnx.eval_shape(lambda: UNet((512, 512, 1), 2, rngs=nnx.Rngs(0)))
    assert _count(model, nnx.Param) == 31_036_546 == _unet_count(1, 2, 64, 4, True)
    # A mean and a var per BN channel: 2 BNs x 2 x (64 + 128 + 256 + 512) + 2 x 2 x 1024.
    assert _count(model, nnx.BatchStat) == 11_776
    assert round(4 * 31_036_546 / 1e6, 2) == 124.15  # MB in float32, cf. the paper's 138.1
    assert _out_shape(model, (1, 512, 512, 1)) == (1, 512, 512, 2)


def test_unet64_without_batch_norm_has_the_2015_count():
    model = nnx.eval_shape(lambda: UNet((512, 512, 1), 2, batch_norm=False, rngs=nnx.Rngs(0)))
    assert _count(model, nnx.Param) == 31_030_658 == _unet_count(1, 2, 64, 4, False)
    assert _count(model, nnx.BatchStat) == 0


@pytest.mark.parametrize("batch_norm", [False, True])
def test_small_unet_count_and_shape(batch_norm):
    model = nnx.eval_shape(
        lambda: UNet((16, 24, 3), 5, width=4, depth=3, batch_norm=batch_norm, rngs=nnx.Rngs(0)))
    assert _count(model, nnx.Param) == _unet_count(3, 5, 4, 3, batch_norm)
    assert _out_shape(model, (2, 16, 24, 3)) == (2, 16, 24, 5)


def test_small_unet_forward_is_finite(built):
    m = built["unet"]
    assert _count(m.params, nnx.Param) == _unet_count(1, 2, 4, 2, True) == 7_482
    y, _ = m.eval(_batch(m.x_shape))
    assert y.shape == (*m.x_shape[:3], 2)
    assert bool(jnp.all(jnp.isfinite(y)))


@pytest.mark.parametrize("shape", [(12, 16, 1), (16, 20, 1), (8, 8, 1)])
def test_unet_input_not_divisible_by_2_to_depth_raises(shape):
    with pytest.raises(ValueError, match=re.escape(f"`input_shape` (={shape})")):
        UNet(shape, 2, width=4, depth=4, rngs=nnx.Rngs(0))


def test_unet_bad_depth_raises():
    with pytest.raises(ValueError, match=re.escape("`depth` (=0)")):
        UNet((16, 16, 1), 2, width=4, depth=0, rngs=nnx.Rngs(0))


def _assert_trees_close(a, b, **tol):
    jax.tree.map(lambda u, v: np.testing.assert_allclose(u, v, **tol), a, b)


def test_train_mode_updates_batch_stats(small):
    _, _, stats = small.train(_batch(small.x_shape))
    changed = jax.tree.map(lambda a, b: not np.allclose(a, b), small.rest, stats)
    assert jax.tree.leaves(changed) and all(jax.tree.leaves(changed))


def test_eval_mode_keeps_batch_stats_and_is_deterministic(small):
    _, _, stats = small.train(_batch(small.x_shape, seed=2))  # non-trivial statistics
    x = _batch(small.x_shape)
    (y1, after1), (y2, after2) = small.eval(x, stats), small.eval(x, stats)
    _assert_trees_close(after1, stats, rtol=0, atol=0)
    _assert_trees_close(after2, stats, rtol=0, atol=0)
    np.testing.assert_array_equal(y1, y2)
    # Eval mode normalises with the running statistics, not the batch's, so example 0's
    # output does not depend on the other examples.
    y3, _ = small.eval(x.at[1:].add(5.0), stats)
    np.testing.assert_allclose(y3[0], y1[0], rtol=1e-5, atol=1e-5)


def test_batch_norm_momentum_is_0_9(built):
    m = built["resnet"]
    x = _batch(m.x_shape)
    _, _, stats = m.train(x)
    stem = nnx.merge(m.graphdef, m.params, m.rest).conv
    # mean <- 0.9 mean + 0.1 batch_mean, from mean = 0.
    batch_mean = jnp.mean(stem(x), axis=(0, 1, 2))
    np.testing.assert_allclose(stats["bn"]["mean"][...], 0.1 * batch_mean, rtol=1e-5, atol=1e-6)


def test_masked_out_rows_do_not_touch_batch_stats_or_other_rows(small):
    mask = np.arange(small.x_shape[0]) < small.x_shape[0] // 2
    x = _batch(small.x_shape)
    junk = jnp.where(mask[:, None, None, None], x, 100.0 * _batch(small.x_shape, seed=3))
    _, y, stats = small.train(x, mask)
    _, y_junk, stats_junk = small.train(junk, mask)
    np.testing.assert_allclose(y[mask], y_junk[mask], rtol=1e-5, atol=1e-5)
    _assert_trees_close(stats, stats_junk, rtol=1e-5, atol=1e-6)
    _, _, stats_all = small.train(junk)  # the junk rows would count without the mask
    assert not all(jax.tree.leaves(jax.tree.map(np.allclose, stats, stats_all)))


def test_param_gradient_is_finite_and_nonzero(small):
    grads, _, _ = small.train(_batch(small.x_shape))
    leaves = [np.asarray(g) for g in jax.tree.leaves(grads)]  # numpy: no per-shape compiles
    assert len(leaves) == len(jax.tree.leaves(small.params))
    assert all(np.isfinite(g).all() for g in leaves)
    assert any(g.any() for g in leaves)


def test_jitted_forward_matches_eager(built):
    small = built["unet"]  # one model: eager mode compiles every op (slow here)
    x = _batch(small.x_shape)
    y_jit, _ = small.eval(x)
    model = nnx.merge(small.eval_graphdef, small.params, small.rest, copy=True)
    np.testing.assert_allclose(model(x), y_jit, rtol=1e-4, atol=1e-5)
