"""Layers the paper's architecture needs and Keras 3 does not ship.

All are written with keras.ops only, so they run on the TensorFlow, JAX and PyTorch backends, and are
registered for safe-mode loading (harness.evaluate.load_model).
"""

from __future__ import annotations

from harness.backend import load_keras

keras = load_keras()
ops = keras.ops


@keras.saving.register_keras_serializable(package="harness")
class Maxout(keras.layers.Layer):
    """Maxout over the channel axis: channel ``u * pieces + p`` belongs to unit ``u``; out = max over p.

    Put it after a layer with ``units * pieces`` channels (Goodfellow et al. 2013, 2014).
    """

    def __init__(self, pieces: int, **kwargs):
        super().__init__(**kwargs)
        self.pieces = int(pieces)

    def call(self, inputs):
        channels = inputs.shape[-1]
        if channels % self.pieces:
            raise ValueError(f"Maxout: {channels} channels are not a multiple of pieces={self.pieces}")
        shape = tuple(-1 if d is None else d for d in (None, *inputs.shape[1:-1]))
        grouped = ops.reshape(inputs, (*shape, channels // self.pieces, self.pieces))
        return ops.max(grouped, axis=-1)

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], input_shape[-1] // self.pieces)

    def get_config(self):
        return {**super().get_config(), "pieces": self.pieces}


@keras.saving.register_keras_serializable(package="harness")
class SubtractiveNormalization(keras.layers.Layer):
    """Subtract each channel's local ``size x size`` mean (the paper's subtractive normalisation).

    The mean is taken per channel over the window, counting only positions inside the image (the
    border is not pulled towards zero), so a constant region maps to exactly zero. No weights.
    """

    def __init__(self, size: int = 3, **kwargs):
        super().__init__(**kwargs)
        self.size = int(size)

    def call(self, inputs):
        # Box sum by a depthwise all-ones kernel, divided by the number of in-image positions in the
        # window (the same convolution of a ones image): explicit, so identical on every backend.
        channels = inputs.shape[-1]
        kernel = ops.ones((self.size, self.size, channels, 1), dtype=inputs.dtype)
        sums = ops.depthwise_conv(inputs, kernel, strides=1, padding="same")
        ones = ops.ones_like(inputs[:1, :, :, :1])
        counts = ops.depthwise_conv(ones, kernel[:, :, :1], strides=1, padding="same")
        return inputs - sums / counts

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "size": self.size}


@keras.saving.register_keras_serializable(package="harness")
class LocallyConnected2D(keras.layers.Layer):
    """A 2D convolution with UNSHARED weights: every output location has its own kernel and bias.

    Stride 1, ``padding`` "same" (zero padding, output size = input size; odd kernels) or "valid".
    Weights: kernel (out_h * out_w, k * k * in_channels, filters), bias (out_h * out_w, filters);
    a patch's features are ordered (row offset, column offset, channel).

    Call cost is k*k slices to build the patches (a trace-time loop over kernel offsets, not over
    locations) and one batched einsum over locations.
    """

    def __init__(self, filters: int, kernel_size: int = 3, padding: str = "same", activation=None,
                 use_bias: bool = True, kernel_initializer=None, bias_initializer="zeros",
                 **kwargs):
        super().__init__(**kwargs)
        if padding not in ("same", "valid"):
            raise ValueError(f"LocallyConnected2D: padding must be 'same' or 'valid', not {padding!r}")
        if padding == "same" and kernel_size % 2 == 0:
            raise ValueError("LocallyConnected2D: 'same' padding needs an odd kernel_size")
        self.filters = int(filters)
        self.kernel_size = int(kernel_size)
        self.padding = padding
        self.activation = keras.activations.get(activation)
        self.use_bias = use_bias
        # None: Glorot uniform with a conv layer's fans (k*k*in, k*k*filters). Keras' own fan rule
        # would multiply by the number of locations for this 3D kernel and start far too small.
        self.kernel_initializer = None if kernel_initializer is None else keras.initializers.get(kernel_initializer)
        self.bias_initializer = keras.initializers.get(bias_initializer)

    def _out_hw(self, height: int, width: int) -> tuple[int, int]:
        if self.padding == "same":
            return height, width
        return height - self.kernel_size + 1, width - self.kernel_size + 1

    def build(self, input_shape):
        height, width, channels = input_shape[1:]
        if height is None or width is None or channels is None:
            raise ValueError("LocallyConnected2D needs a fully known input shape (height, width, channels)")
        out_h, out_w = self._out_hw(height, width)
        if out_h < 1 or out_w < 1:
            raise ValueError(f"LocallyConnected2D: input {height}x{width} is smaller than the kernel")
        k = self.kernel_size
        initializer = self.kernel_initializer
        if initializer is None:
            limit = (6.0 / (k * k * channels + k * k * self.filters)) ** 0.5
            initializer = keras.initializers.RandomUniform(-limit, limit)
        self.kernel = self.add_weight(
            name="kernel", shape=(out_h * out_w, k * k * channels, self.filters), initializer=initializer
        )
        self.bias = (
            self.add_weight(name="bias", shape=(out_h * out_w, self.filters), initializer=self.bias_initializer)
            if self.use_bias else None
        )

    def _patches(self, inputs):
        k = self.kernel_size
        height, width = inputs.shape[1], inputs.shape[2]
        out_h, out_w = self._out_hw(height, width)
        if self.padding == "same":
            p = k // 2
            inputs = ops.pad(inputs, ((0, 0), (p, p), (p, p), (0, 0)))
        slices = [inputs[:, i:i + out_h, j:j + out_w, :] for i in range(k) for j in range(k)]
        return ops.concatenate(slices, axis=-1)  # (batch, out_h, out_w, k*k*channels)

    def call(self, inputs):
        height, width = inputs.shape[1], inputs.shape[2]
        out_h, out_w = self._out_hw(height, width)
        patches = self._patches(inputs)
        patches = ops.reshape(patches, (-1, out_h * out_w, patches.shape[-1]))
        out = ops.einsum("bpk,pkf->bpf", patches, self.kernel)
        if self.use_bias:
            out = out + self.bias
        out = ops.reshape(out, (-1, out_h, out_w, self.filters))
        return self.activation(out)

    def compute_output_shape(self, input_shape):
        out_h, out_w = self._out_hw(input_shape[1], input_shape[2])
        return (input_shape[0], out_h, out_w, self.filters)

    def get_config(self):
        return {
            **super().get_config(),
            "filters": self.filters,
            "kernel_size": self.kernel_size,
            "padding": self.padding,
            "activation": keras.activations.serialize(self.activation),
            "use_bias": self.use_bias,
            "kernel_initializer": (
                None if self.kernel_initializer is None else keras.initializers.serialize(self.kernel_initializer)
            ),
            "bias_initializer": keras.initializers.serialize(self.bias_initializer),
        }
