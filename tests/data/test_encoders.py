"""SSL encoder registry: architectures and transforms, local weights, clear errors, the region grid."""

from __future__ import annotations

import numpy as np
import pytest
import timm
import torch

from zoomldm.errors import ZoomLDMError
from zoomldm.models.encoders import ENCODERS, build_encoder, encode_region_grid


@pytest.mark.parametrize(
    ("name", "patch", "registers", "layer_scale"),
    [("uni", 16, 0, True), ("dinov2_vitl14_reg", 14, 4, True), ("dinov2", 14, 4, True)],
)
def test_registered_architectures(name, patch, registers, layer_scale):
    """Built on the meta device (no memory, no weights): the architecture and transform are checked."""
    with torch.device("meta"):
        enc = build_encoder(name, weights="random", device="meta")
    model = enc.model
    assert enc.dim == 1024 and len(model.blocks) == 24
    assert model.patch_embed.proj.kernel_size == (patch, patch)
    assert model.num_reg_tokens == registers and model.global_pool == "token"
    assert model.dynamic_img_size  # 224 input for both (DINOv2's 518 grid is interpolated)
    assert hasattr(model.blocks[0].ls1, "gamma") == layer_scale
    assert enc.transform["input_size"] == [224, 224]
    assert enc.transform["mean"] == [0.485, 0.456, 0.406] and enc.transform["std"] == [0.229, 0.224, 0.225]
    assert enc.transform["output"] == "CLS token after the final norm"
    assert enc.transform["weights"] == "random (not pretrained)"
    if name == "uni":
        assert model.blocks[0].ls1.gamma.shape == (1024,)
        assert ENCODERS["uni"].timm_kwargs["init_values"] == 1e-5


def test_embed_uint8_and_float_inputs_agree(tiny_encoder):
    rng = np.random.default_rng(0)
    tiles = rng.integers(0, 256, size=(5, 256, 256, 3), dtype=np.uint8)
    a = tiny_encoder.embed(tiles)
    b = tiny_encoder.embed(torch.from_numpy(tiles).permute(0, 3, 1, 2).float() / 255, batch_size=2)
    assert a.shape == (5, 32) and a.dtype == torch.float32
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    assert tiny_encoder.transform["input_size"] == [64, 64]
    with pytest.raises(ZoomLDMError, match=r"\[N, H, W, 3\]"):
        tiny_encoder.embed(tiles[..., :2])


def test_region_grid_is_row_major_one_embedding_per_tile(tiny_encoder, brca_image):
    region = brca_image[:512, :768]
    grid = encode_region_grid(tiny_encoder, region)
    assert grid.shape == (32, 2, 3)
    for r in range(2):
        for c in range(3):
            tile = region[256 * r : 256 * (r + 1), 256 * c : 256 * (c + 1)][None]
            torch.testing.assert_close(grid[:, r, c], tiny_encoder.embed(tile)[0], atol=1e-5, rtol=1e-5)
    with pytest.raises(ZoomLDMError, match="multiples of the 256-px base tile"):
        encode_region_grid(tiny_encoder, region[:300])


def test_local_weights_file_is_loaded_strictly(tmp_path):
    kwargs = dict(embed_dim=32, depth=2, num_heads=2, img_size=64)
    torch.manual_seed(3)
    source = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0, **kwargs)
    torch.save(source.state_dict(), tmp_path / "tiny.pth")
    enc = build_encoder("timm:vit_tiny_patch16_224", weights=tmp_path / "tiny.pth", **kwargs)
    assert enc.transform["weights"] == "file tiny.pth"
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(enc.model(x), source.eval()(x))
    with pytest.raises(ZoomLDMError, match="tiny.pth does not fit"):
        build_encoder(
            "timm:vit_tiny_patch16_224", weights=tmp_path / "tiny.pth", embed_dim=48, depth=2, num_heads=2
        )
    with pytest.raises(ZoomLDMError, match="encoder weights not found"):
        build_encoder("uni", weights=tmp_path / "missing.bin")


def test_unknown_names_and_offline_hub_are_clear_errors(monkeypatch):
    with pytest.raises(ZoomLDMError, match="unknown SSL encoder 'conch'"):
        build_encoder("conch")
    with pytest.raises(ZoomLDMError, match="timm has no model 'not_a_model'"):
        build_encoder("timm:not_a_model")
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ZoomLDMError, match="--encoder-weights"):
        build_encoder("timm:vit_tiny_patch16_224", embed_dim=32, depth=1, num_heads=2)


def test_dinov2_vitl14_reg_is_the_published_naip_conditioning(compat_dir):
    """The published NAIP model's Summarizer reduces 1024-d inputs (its ``dim_reduce`` in the authors'
    checkpoint, recorded in the NAIP compat manifest) over 4 magnification embeddings: the width of
    ``dinov2_vitl14_reg`` (ViT-L/14, 4 registers, CLS token) and the satellite levels."""
    import json

    from zoomldm.models.encoders import DOMAIN_ENCODERS
    from zoomldm.scales import SATELLITE

    manifest = json.loads((compat_dir / "manifest_naip.json").read_text())
    shapes = {e["key"]: e["shape"] for e in manifest["entries"]}
    assert DOMAIN_ENCODERS["satellite"] == "dinov2_vitl14_reg"
    with torch.device("meta"):
        enc = build_encoder("dinov2_vitl14_reg", weights="random", device="meta")
    assert shapes["cond_stage_model.dim_reduce.weight"][1] == enc.dim == 1024
    assert shapes["cond_stage_model.mag_embedding.weight"][0] == len(SATELLITE) == 4
    assert enc.transform["resize"].startswith("bicubic") and enc.model.num_reg_tokens == 4
