"""Measured weight stds match the documented init mapping (model/init.py)."""
import math

import pytest
import torch

from sa_megatron.model import build_model
from tests.model.tiny import VOCAB, tiny_config

HIDDEN, LAYERS = 256, 4
SMALL = math.sqrt(2 / (5 * HIDDEN))
WANG = 2 / (LAYERS * math.sqrt(HIDDEN))


def measured_stds(init_method, output_init_method, **overrides):
    torch.manual_seed(0)
    config = tiny_config(hidden_size=HIDDEN, num_layers=LAYERS, init_method=init_method,
                         output_init_method=output_init_method, init_std=0.03,
                         position_encoding="learned", tie_embeddings=False, **overrides)
    model = build_model(config, VOCAB)
    stds = {}
    for name, param in model.named_parameters():
        kind = name.split(".", 1)[-1]  # drop the layer index
        kind = "word_embeddings.weight" if kind == "weight" else kind  # layer 0, the untied token embedding
        stds.setdefault(kind, []).append(param.detach().flatten())
    return model, {kind: torch.cat(values).std().item() for kind, values in stds.items()}


def test_small_init_inputs_and_wang_init_outputs():
    model, stds = measured_stds("small_init", "wang_init")
    expected = {
        "word_embeddings.weight": SMALL, "position_embeddings.weight": SMALL, "head_weight": SMALL,
        "attention.qkv.weight": SMALL, "mlp.fc_in.weight": SMALL,
        "attention.dense.weight": WANG, "mlp.fc_out.weight": WANG,
    }
    for kind, std in expected.items():
        assert stds[kind] == pytest.approx(std, rel=0.05), kind
    for name, param in model.named_parameters():
        if name.endswith("bias") and "norm" not in name:
            assert param.abs().max() == 0, name
        if "norm" in name:
            assert (param == (1 if name.endswith("weight") else 0)).all(), name


def test_normal_init_uses_init_std_everywhere():
    _, stds = measured_stds("normal", "normal", mlp="swiglu")
    for kind in ("word_embeddings.weight", "head_weight", "attention.qkv.weight", "attention.dense.weight",
                 "mlp.fc_in.weight", "mlp.fc_gate.weight", "mlp.fc_out.weight"):
        assert stds[kind] == pytest.approx(0.03, rel=0.05), kind


def test_scaled_normal_outputs_follow_megatron():
    _, stds = measured_stds("normal", "scaled_normal")
    assert stds["attention.qkv.weight"] == pytest.approx(0.03, rel=0.05)
    for kind in ("attention.dense.weight", "mlp.fc_out.weight"):
        assert stds[kind] == pytest.approx(0.03 / math.sqrt(2 * LAYERS), rel=0.05), kind
