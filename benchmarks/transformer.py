"""The pre-norm transformer blocks of the one-shot benchmarks."""

import keras


def blocks(x, count, heads):
    """`count` pre-norm causal blocks on `x` (batch, positions, width).

    Each block is MultiHeadAttention (`attn{i}`), then a GELU feed-forward pair
    of 4x the width (`up{i}`, `down{i}`), each with a residual connection.
    """
    width = x.shape[-1]
    for i in range(count):
        h = keras.layers.LayerNormalization()(x)
        h = keras.layers.MultiHeadAttention(heads, width // heads, name=f"attn{i}")(
            h, h, use_causal_mask=True
        )
        x = x + h
        h = keras.layers.LayerNormalization()(x)
        h = keras.layers.Dense(4 * width, activation="gelu", name=f"up{i}")(h)
        x = x + keras.layers.Dense(width, name=f"down{i}")(h)
    return x
