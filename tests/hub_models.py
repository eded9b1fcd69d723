"""Tiny KerasHub models built from config, with random weights, shared by the tests.

Import after `pytest.importorskip("keras_hub")`.
"""

import keras_hub

H = keras_hub.models

SEQ = 8  # the sequence length of the models with a position embedding


def bert(dropout=None):
    """A two-block BertTextClassifier; `dropout` for both the backbone and the head
    (`None`: KerasHub's defaults)."""
    rate = {} if dropout is None else {"dropout": dropout}
    backbone = H.BertBackbone(
        vocabulary_size=50,
        num_layers=2,
        num_heads=2,
        hidden_dim=16,
        intermediate_dim=32,
        max_sequence_length=SEQ,
        **rate,
    )
    return H.BertTextClassifier(backbone, num_classes=2, preprocessor=None, **rate)


def gpt2():
    backbone = H.GPT2Backbone(
        vocabulary_size=50,
        num_layers=2,
        num_heads=2,
        hidden_dim=16,
        intermediate_dim=32,
        max_sequence_length=SEQ,
    )
    return H.GPT2CausalLM(backbone, preprocessor=None)


def grouped_query(backbone_class):
    """A tiny backbone with grouped-query attention: 4 query heads share 2 key/value heads."""
    return backbone_class(
        vocabulary_size=50,
        num_layers=2,
        num_query_heads=4,
        num_key_value_heads=2,
        hidden_dim=16,
        intermediate_dim=32,
    )


def llama():
    return H.LlamaCausalLM(grouped_query(H.LlamaBackbone), preprocessor=None)


def gemma(num_key_value_heads=1):
    # One key/value head unless asked; query kernels laid out (heads, hidden, head_dim).
    backbone = H.GemmaBackbone(
        vocabulary_size=50,
        num_layers=2,
        num_query_heads=4,
        num_key_value_heads=num_key_value_heads,
        hidden_dim=16,
        intermediate_dim=32,
        head_dim=4,
    )
    return H.GemmaCausalLM(backbone, preprocessor=None)


MODELS = {"bert": bert, "gpt2": gpt2, "llama": llama, "gemma": gemma}
