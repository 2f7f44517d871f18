"""Flax (linen) models of the workloads.

The simulator sees a model only as a pure ``apply(params, x)`` and a params pytree, so no model
here carries mutable state (no BatchNorm statistics, no dropout RNG): ``module.apply(params, x)``
is all it takes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxasync.transforms import tree_sq_dist

__all__ = ["MLP", "CNN1D", "Conv1D", "ResNet18", "BasicBlock", "Linear", "count_params",
           "mlp_grad_pair", "INITS", "torch_init", "with_init"]


def count_params(params) -> int:
    """Number of scalars in a params pytree."""
    return sum(int(x.size) for x in jax.tree.leaves(params))


#: ``workload.init``: ``flax`` (its defaults: LeCun-normal kernels, zero biases) or ``torch``
INITS = ("flax", "torch")


def torch_init(params, key: jax.Array):
    r"""``params`` with every dense and convolutional layer initialised as PyTorch does.

    ``torch.nn.Linear`` and ``torch.nn.Conv1d/2d`` draw the weight with
    ``kaiming_uniform_(a=sqrt(5))``, i.e. :math:`U(-b, b)` with
    :math:`b = \sqrt{2/(1+5)}\sqrt{3/	ext{fan\_in}} = 1/\sqrt{	ext{fan\_in}}`, and the bias
    from the same :math:`U(-1/\sqrt{	ext{fan\_in}}, 1/\sqrt{	ext{fan\_in}})`
    (``reset_parameters`` in torch/nn/modules/linear.py and conv.py). A layer here is any dict
    holding a ``kernel`` of rank >= 2 (Flax's ``Dense`` [in, out], ``Conv`` [..., in, out] and
    :class:`Conv1D`), with fan_in = the product of all but the last axis, and its ``bias`` if it
    has one. Normalisation layers (scale 1, bias 0 in both libraries) and the convex models'
    zero-initialised :class:`Linear` keep their values. Each layer gets its own key, folded in
    from ``key`` by the layer's path, so adding a layer changes no other layer's draw.
    """
    import zlib

    def walk(node, path):
        if not isinstance(node, dict):
            return node
        kernel = node.get("kernel")
        if kernel is not None and getattr(kernel, "ndim", 0) >= 2:
            fan_in = 1
            for d in kernel.shape[:-1]:
                fan_in *= int(d)
            bound = 1.0 / fan_in**0.5
            k = jax.random.fold_in(key, zlib.crc32("/".join(path).encode()) & 0x7FFFFFFF)
            k_w, k_b = jax.random.split(k)
            out = dict(node)
            out["kernel"] = jax.random.uniform(k_w, kernel.shape, kernel.dtype, -bound, bound)
            if "bias" in node:
                b = node["bias"]
                out["bias"] = jax.random.uniform(k_b, b.shape, b.dtype, -bound, bound)
            return out
        return {name: walk(child, (*path, str(name))) for name, child in node.items()}

    return walk(params, ())


def with_init(init, scheme: str):
    """The workload's ``init`` (PRNG key -> params) under initialisation ``scheme``."""
    if scheme not in INITS:
        raise ValueError(f"init={scheme!r}: unknown; choose one of {', '.join(INITS)}")
    if scheme == "flax":
        return init
    # (the flax draw is made and replaced: its key is not reused for the torch draw)
    return lambda key: torch_init(init(key), jax.random.fold_in(key, 0x7041))


class Linear(nn.Module):
    """x -> x @ w with a single weight vector ``w`` [d], initialised at zero, no bias.

    Used by the convex workloads: with this parameterisation the Hessian of
    0.5 * mean((A w - b)^2) is exactly A^T A / n, so the smoothness constants computed in
    :mod:`jaxasync.data` hold for these params as they are. Zero init matches the start
    x0 = 0 of Mishchenko et al. (2022).
    """

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        w = self.param("w", nn.initializers.zeros_init(), (x.shape[-1],), jnp.float32)
        return x @ w


class MLP(nn.Module):
    """Fully connected ReLU network: flatten, ``features`` hidden layers, ``num_classes`` logits.

    ``MLP((512,), 10)`` on 784 inputs is the MNIST net of the SASG authors
    (github.com/xiaogdeng/SASG, ``MNISTNet`` in sasg-dis/tasks/cifar_architectures/lenet.py):
    784*512 + 512 + 512*10 + 10 = 407,050 parameters. Flax's default initialisers (LeCun normal
    kernels, zero biases) differ from PyTorch's uniform ones; the architecture is the same.
    """

    features: Sequence[int]
    num_classes: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = x.reshape(x.shape[0], -1)
        for width in self.features:
            x = nn.relu(nn.Dense(width)(x))
        return nn.Dense(self.num_classes)(x)



def mlp_grad_pair(module: MLP, loss_of_logits: Callable[[jax.Array, jax.Array], jax.Array]
                  ) -> tuple[Callable, Callable]:
    r"""``(reference, pair)`` of :func:`jaxasync.workloads.gradient_pair` for an
    :class:`MLP`: exact, and never forming the gradient at the reference point.

    ``reference(params_b, x, y)`` returns what the distance needs from the gradient at ``b``:
    the loss's gradient :math:`\delta_b` [B, d_1] at the first pre-activation and the other
    layers' parameter gradients. ``pair(params_a, ref, x, y)`` returns ``(loss_a, grad_a,
    dist_sq)`` with ``dist_sq`` = :math:`\|\nabla L(a; x, y) - \nabla L(b; x, y)\|^2`, the
    skip test of LAG/LASG/SASG. The first layer's kernel gradient is :math:`X^\top \delta`
    (``X`` [B, d_in] the flattened batch) at both points, so its part of the distance is
    :math:`\|X^\top \Delta\|_F^2 = \langle X X^\top, \Delta \Delta^\top\rangle` with
    :math:`\Delta = \delta_a - \delta_b`: two B x B Gram matrices instead of two d_in x d_1
    gradients (the "ghost norm" of per-example clipping: Goodfellow, 2015, arXiv 1510.01799;
    Li, Tramer, Liang, Hashimoto, 2022, arXiv 2110.05679). The other layers are small and
    differenced as they are. In float32 this is *more* accurate than differencing two formed
    gradients: :math:`\Delta` is taken before the product, so nothing cancels when
    :math:`a \approx b`, where the test decides.

    ``loss_of_logits(logits, y)`` is the mean loss; the forward pass is the module's own
    (``x @ kernel + bias``, ReLU between layers).
    """
    layers = len(module.features) + 1
    first = "Dense_0"

    def tail(rest: dict, z: jax.Array, y: jax.Array) -> jax.Array:
        h = z
        for i in range(1, layers):
            layer = rest[f"Dense_{i}"]
            h = nn.relu(h) @ layer["kernel"] + layer["bias"]
        return loss_of_logits(h, y)

    def split(params, x):
        p = params["params"]
        xf = x.reshape(x.shape[0], -1)
        return xf, xf @ p[first]["kernel"] + p[first]["bias"], {
            k: v for k, v in p.items() if k != first}

    def reference(params_b, x, y):
        _, z_b, rest_b = split(params_b, x)
        g_rest_b, delta_b = jax.grad(tail, argnums=(0, 1))(rest_b, z_b, y)
        return delta_b, g_rest_b

    def pair(params_a, ref, x, y):
        delta_b, g_rest_b = ref
        xf, z_a, rest_a = split(params_a, x)
        loss_a, (g_rest_a, delta_a) = jax.value_and_grad(tail, argnums=(0, 1))(rest_a, z_a, y)
        grad_a = {"params": {**g_rest_a,
                             first: {"kernel": xf.T @ delta_a, "bias": jnp.sum(delta_a, 0)}}}
        diff = delta_a - delta_b
        kernel_sq = jnp.maximum(jnp.sum((xf @ xf.T) * (diff @ diff.T)), 0.0)
        return loss_a, grad_a, (kernel_sq + jnp.sum(jnp.square(jnp.sum(diff, 0)))
                                + tree_sq_dist(g_rest_a, g_rest_b))

    return reference, pair

class Conv1D(nn.Module):
    """1-D convolution ([B, L, C] -> [B, ceil(L / strides), features]) computed as a matmul.

    Zero padding of ``kernel_size // 2`` on both sides (PyTorch's ``padding=k//2``). The input is
    unfolded into ``kernel_size`` shifted views and contracted with the kernel in one einsum.
    Why not ``nn.Conv``: XLA:CPU runs convolutions inside ``lax.scan`` bodies on a slow path; on
    this project's 2-core CPU a scanned step of 10 vmapped workers x batch 10 through
    :class:`CNN1D` took 104 ms with ``nn.Conv`` and 3 ms with this matmul form. Parameters have
    ``nn.Conv``'s shapes (kernel [k, C, features], bias [features]) and initialisers.
    """

    features: int
    kernel_size: int = 5
    strides: int = 1

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        k, s = self.kernel_size, self.strides
        kernel = self.param(
            "kernel", nn.initializers.lecun_normal(), (k, x.shape[-1], self.features), jnp.float32
        )
        bias = self.param("bias", nn.initializers.zeros_init(), (self.features,), jnp.float32)
        length_out = -(-x.shape[1] // s)
        padded = jnp.pad(x, ((0, 0), (k // 2, k // 2), (0, 0)))
        # views[:, t, j] = padded[:, s * t + j]: the j-th tap of every output position.
        views = jnp.stack(
            [padded[:, j : j + s * (length_out - 1) + 1 : s] for j in range(k)], axis=2
        )
        return jnp.einsum("btjc,jcf->btf", views, kernel) + bias


class CNN1D(nn.Module):
    """Small 1-D convolutional net for MNIST-1D ([B, 40] signals).

    Three kernel-5 convolutions with ReLU (the first with stride 2), then a dense classifier, in
    the spirit of the ``ConvBase`` baseline of Greydanus & Kobak (2020, arXiv 2011.14439), which
    reaches about 94% test accuracy. 16,906 parameters with the defaults, cheap on a CPU.
    """

    num_classes: int = 10
    channels: int = 32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = x.reshape(x.shape[0], -1, 1)  # [B, length, 1 channel]
        x = nn.relu(Conv1D(self.channels, 5, strides=2)(x))
        x = nn.relu(Conv1D(self.channels, 5)(x))
        x = nn.relu(Conv1D(self.channels, 5)(x))
        return nn.Dense(self.num_classes)(x.reshape(x.shape[0], -1))


def _norm(channels: int, name: str) -> nn.Module:
    # GroupNorm with 32 groups (Wu & He, 2018, arXiv 1803.08494), the paper's default; every
    # ResNet-18 width (64..512) is divisible by 32.
    return nn.GroupNorm(num_groups=min(32, channels), name=name)


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with a residual connection (He et al., 2016, arXiv 1512.03385).

    A 1x1 strided projection (with its normalisation) replaces the identity shortcut when the
    shape changes, as in the CIFAR ResNet of the SASG code (kuangliu/pytorch-cifar lineage).
    """

    channels: int
    strides: int = 1

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        def conv(kernel: int, strides: int, name: str) -> nn.Conv:
            # Explicit symmetric padding, as PyTorch's padding=1 (3x3) / 0 (1x1): Flax's "SAME"
            # pads only the far side when striding, which shifts the sampling grid.
            pad = (kernel - 1) // 2
            return nn.Conv(
                self.channels,
                (kernel, kernel),
                strides=(strides, strides),
                padding=((pad, pad), (pad, pad)),
                use_bias=False,
                name=name,
            )

        y = nn.relu(_norm(self.channels, "norm1")(conv(3, self.strides, "conv1")(x)))
        y = _norm(self.channels, "norm2")(conv(3, 1, "conv2")(y))
        if self.strides != 1 or x.shape[-1] != self.channels:
            x = _norm(self.channels, "shortcut_norm")(conv(1, self.strides, "shortcut")(x))
        return nn.relu(y + x)


class ResNet18(nn.Module):
    """ResNet-18 for 32x32 images (CIFAR variant), NHWC input.

    3x3 stem convolution (stride 1, no max-pool), four stages of two basic blocks with widths
    64-128-256-512 (strides 1, 2, 2, 2), global average pooling, a dense classifier: the network
    of the SASG authors (sasg-dis/tasks/cifar_architectures/resnet.py).

    Deviation: GroupNorm (32 groups) replaces BatchNorm, so the model is a pure function of its
    params with no running statistics to carry through the asynchronous simulator, and per-worker
    minibatches of 10 (SASG's protocol) do not make the normalisation noisy. Each norm layer has a
    per-channel scale and bias exactly like BatchNorm's trainable parameters, so the parameter
    count is unchanged: 11,173,962 for 10 classes (the paper's "11.17 M"), 11,220,132 for 100.
    Accuracy with GroupNorm is typically a little below BatchNorm's at large batch sizes (Wu & He,
    2018), so the published 92% is a demanding target for this variant.
    """

    num_classes: int = 10
    stage_sizes: Sequence[int] = (2, 2, 2, 2)
    widths: Sequence[int] = (64, 128, 256, 512)

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = nn.Conv(self.widths[0], (3, 3), padding=1, use_bias=False, name="stem")(x)
        x = nn.relu(_norm(self.widths[0], "stem_norm")(x))
        for stage, (blocks, width) in enumerate(zip(self.stage_sizes, self.widths, strict=True)):
            for block in range(blocks):
                strides = 2 if stage > 0 and block == 0 else 1
                x = BasicBlock(width, strides, name=f"stage{stage + 1}_block{block + 1}")(x)
        x = jnp.mean(x, axis=(1, 2))  # global average pool (4x4 after three stride-2 stages)
        return nn.Dense(self.num_classes, name="head")(x)
