"""Structure probing: decoder layers and final norm on the four tiny architectures."""

from __future__ import annotations

import pytest
from torch import nn

from scans.errors import ScansError
from scans.models import find_final_norm, find_layers, model_fingerprint


def test_find_layers_default_paths(tiny):
    layers = find_layers(tiny.model)
    assert isinstance(layers, nn.ModuleList)
    assert len(layers) == 2
    assert layers is tiny.model.model.layers


def test_find_layers_override(tiny):
    assert find_layers(tiny.model, "model.layers") is tiny.model.model.layers


@pytest.mark.parametrize("path", ["model.blocks", "transformer.h", "model.norm", "nope"])
def test_find_layers_bogus_path(tiny, path):
    with pytest.raises(ScansError) as info:
        find_layers(tiny.model, path)
    message = str(info.value)
    assert "\n" not in message
    assert "fix:" in message
    assert path in message


def test_find_layers_no_known_path():
    class Bare(nn.Module):
        def __init__(self):
            super().__init__()
            self.blocks = nn.ModuleList([nn.Linear(2, 2)])

    with pytest.raises(ScansError, match="fix:"):
        find_layers(Bare())
    assert len(find_layers(Bare(), "blocks")) == 1


def test_find_final_norm(tiny):
    norm = find_final_norm(tiny.model)
    assert norm is tiny.model.model.norm
    assert "Norm" in type(norm).__name__


def test_find_final_norm_absent():
    assert find_final_norm(nn.Linear(2, 2)) is None


def test_fingerprint_distinguishes_models():
    from conftest import _tiny, make_model

    prints = {arch: model_fingerprint(_tiny(arch).model) for arch in ("llama", "qwen2", "gemma", "mistral")}
    assert len(set(prints.values())) == 4
    # Same weights, same print; another seed, another print.
    assert model_fingerprint(make_model("qwen2", seed=0)) == prints["qwen2"]
    assert model_fingerprint(make_model("qwen2", seed=1)) != prints["qwen2"]


def test_fingerprint_is_dtype_independent():
    import copy

    import torch

    from conftest import _tiny

    model = _tiny("llama").model
    half = copy.deepcopy(model).to(torch.bfloat16)
    assert model_fingerprint(half) == model_fingerprint(model)
