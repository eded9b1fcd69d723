"""Input axes of EinsumDense and MultiHeadAttention kernels, read from their equations."""

import numpy as np
import pytest

import tf_lottery as tl
import keras
from keras import layers as L
from tf_lottery.registry import einsum_input_axes


@pytest.mark.parametrize(
    "equation, axes",
    [
        ("ab,bc->ac", (0,)),  # Dense-like
        ("abc,cde->abde", (0,)),  # MHA query/key/value: [in, heads, head_dim]
        ("abcd,cde->abe", (0, 1)),  # MHA output: [heads, head_dim, out]
        ("btd,dnh->btnh", (0,)),  # Gemma-style query kernel [hidden, heads, head_dim]
        ("btnh,nhd->btd", (0, 1)),
        ("a b c, c d e -> a b d e", (0,)),
    ],
)
def test_einsum_input_axes_are_the_contracted_kernel_letters(equation, axes):
    assert einsum_input_axes(equation) == axes


def _groups_kept(weight, axes, m):
    """The most weights kept in any group of m consecutive inputs of one output."""
    rest = [a for a in range(weight.ndim) if a not in axes]
    matrix = np.transpose(weight, [*axes, *rest]).reshape(
        int(np.prod([weight.shape[a] for a in axes])), -1
    )
    groups = (matrix != 0).reshape(-1, m, matrix.shape[1])
    return groups.sum(axis=1).max()


def test_n_m_sparsity_groups_attention_kernels_along_their_inputs():
    inputs = keras.Input((6, 16))
    attention = L.MultiHeadAttention(num_heads=2, key_dim=8, name="mha")
    model = keras.Model(inputs, attention(inputs, inputs))
    model = tl.wrap(model)
    tl.prune(model, tl.NMSparsity(2, 4))
    (wrapper,) = tl.find_wrappers(model)
    for masked in wrapper.masked_weights:
        weight = keras.ops.convert_to_numpy(masked.variable.value)
        kernel_axes = (0, 1) if weight.shape[-1] == 16 and weight.ndim == 3 else (0,)
        # Exactly half of every kernel, two of every four inputs per output.
        assert np.mean(weight == 0) == pytest.approx(0.5), masked.name
        assert _groups_kept(weight, kernel_axes, 4) == 2, masked.name
