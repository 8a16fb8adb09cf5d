"""The gated-attention MIL model: shapes, masking, permutation invariance, save/load."""

from __future__ import annotations

import pytest
import torch

from zoomldm.errors import ZoomLDMError
from zoomldm.features.abmil import ABMILConfig, GatedABMIL, load_abmil, save_abmil


def _model(**kw) -> GatedABMIL:
    torch.manual_seed(0)
    return GatedABMIL(ABMILConfig(in_dim=12, n_classes=3, **kw)).eval()


def test_shapes_attention_and_permutation_invariance():
    model = _model()
    x = torch.randn(9, 12)
    logits, attention = model(x)
    assert logits.shape == (3,) and attention.shape == (9,)
    assert torch.all(attention > 0) and torch.isclose(attention.sum(), torch.tensor(1.0))
    perm = torch.randperm(9)
    logits_p, attention_p = model(x[perm])
    torch.testing.assert_close(logits_p, logits, atol=1e-5, rtol=1e-5)  # a bag is a set
    torch.testing.assert_close(attention_p, attention[perm])
    # the gated branch has the conventional sizes
    assert model.attention_v[0].out_features == 256 and isinstance(model.attention_v[1], torch.nn.Tanh)
    assert isinstance(model.attention_u[1], torch.nn.Sigmoid) and model.embed[2].p == 0.25


def test_padded_batch_matches_single_bags():
    model = _model()
    a, b = torch.randn(5, 12), torch.randn(3, 12)
    batch = torch.zeros(2, 5, 12)
    batch[0], batch[1, :3] = a, b
    mask = torch.tensor([[True] * 5, [True] * 3 + [False] * 2])
    logits, attention = model(batch, mask)
    torch.testing.assert_close(logits[1], model(b)[0], atol=1e-5, rtol=1e-5)
    assert torch.all(attention[1, 3:] == 0)
    torch.testing.assert_close(attention[0], model(a)[1])


def test_save_and_load_round_trip(tmp_path):
    model = _model(embed_dim=64, attn_dim=32, dropout=0.1)
    path = save_abmil(model, tmp_path / "m.safetensors", ["x", "y", "z"], {"fold": 2})
    loaded, classes, extra = load_abmil(path)
    assert classes == ["x", "y", "z"] and extra == {"fold": 2} and loaded.config == model.config
    x = torch.randn(4, 12)
    torch.testing.assert_close(loaded(x)[0], model(x)[0])
    (tmp_path / "bad.safetensors").write_bytes(b"\x00" * 16)
    with pytest.raises(ZoomLDMError, match="not a safetensors MIL model"):
        load_abmil(tmp_path / "bad.safetensors")


def test_wrong_feature_dimension_is_a_user_error():
    with pytest.raises(ZoomLDMError, match="12-d features"):
        _model()(torch.randn(4, 7))
