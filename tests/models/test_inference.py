"""Inference speed settings (``ZoomLDMPipeline.optimize``): same outputs up to rounding, plain checkpoints.

The compat checkpoint (real official-format weights, small architecture) is loaded fresh in each test that
changes it in place, so no other test sees an optimised model.
"""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from zoomldm import ZoomLDMPipeline
from zoomldm.models.autoencoder import OfficialVectorQuantizer
from zoomldm.models.inference import is_fused, unfused


@pytest.fixture
def pipe(small_checkpoint, small_config) -> ZoomLDMPipeline:
    torch.set_num_threads(1)
    return ZoomLDMPipeline.from_official(small_checkpoint, config=small_config)


def _outputs(pipe: ZoomLDMPipeline) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    lat, dim = pipe.config.latent_size, pipe.config.context_dim
    x = torch.randn(2, 3, lat, lat, generator=g)
    ctx = torch.randn(2, 65, dim, generator=g)
    img = torch.rand(2, 3, pipe.config.image_size, pipe.config.image_size, generator=g) * 2 - 1
    with torch.no_grad():
        return {
            "unet": pipe.unet(x, torch.tensor([10.0, 900.0]), encoder_hidden_states=ctx).sample,
            "unet_uncond": pipe.unet(x, torch.tensor([500.0] * 2), encoder_hidden_states=0 * ctx).sample,
            "encode": pipe.vae.encode(img).latents,
            "decode": pipe.vae.decode(x, force_not_quantize=True).sample,
        }


@pytest.mark.parametrize("channels_last", [False, True])
def test_optimized_networks_give_the_same_outputs(pipe, channels_last):
    before = _outputs(pipe)
    pipe.optimize(channels_last=channels_last)
    assert pipe.inference_settings["fused_qkv"] > 0
    assert pipe.inference_settings["channels_last"] is channels_last
    assert is_fused(pipe.unet) and is_fused(pipe.vae)
    after = _outputs(pipe)
    for name, ref in before.items():
        # float32 on CPU: fused matmuls and NHWC convolutions only reorder the additions
        torch.testing.assert_close(after[name], ref, rtol=1e-4, atol=1e-4, msg=name)


def test_channels_last_defaults_to_cuda_only(pipe):
    pipe.optimize()
    fused = pipe.inference_settings["fused_qkv"]
    assert pipe.optimize().inference_settings["fused_qkv"] == fused > 0  # idempotent, and says so
    assert pipe.inference_settings["channels_last"] is False  # CPU: slower there (benchmarks/RESULTS.md)
    conv = pipe.unet.conv_in.weight
    assert conv.is_contiguous()


def test_save_pretrained_after_optimize_writes_only_the_model_keys(
    pipe, small_checkpoint, small_config, tmp_path
):
    plain = ZoomLDMPipeline.from_official(small_checkpoint, config=small_config)
    plain.save_pretrained(tmp_path / "plain")
    pipe.optimize()
    pipe.save_pretrained(tmp_path / "optimized")
    assert is_fused(pipe.unet), "saving must leave the pipeline optimised"
    for part in ("unet", "vae"):
        a = load_file(tmp_path / "plain" / part / "diffusion_pytorch_model.safetensors")
        b = load_file(tmp_path / "optimized" / part / "diffusion_pytorch_model.safetensors")
        assert sorted(a) == sorted(b)
        assert not any(".to_qkv." in k or ".to_kv." in k for k in b)
        for key in a:
            torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)
    ZoomLDMPipeline.from_pretrained(tmp_path / "optimized")  # strict load of our format


def test_unfused_restores_plain_state_dict_keys(pipe):
    keys = set(pipe.unet.state_dict())
    pipe.optimize()
    assert set(pipe.unet.state_dict()) > keys
    with unfused(pipe.unet, pipe.vae):
        assert set(pipe.unet.state_dict()) == keys
    assert is_fused(pipe.unet)


def test_compile_compiles_the_unet_and_both_vq_halves(pipe, monkeypatch):
    compiled = []
    monkeypatch.setattr(torch.nn.Module, "compile", lambda self, **kw: compiled.append((self, kw)))
    pipe.optimize(compile="max-autotune")
    assert [m for m, _ in compiled] == [pipe.unet, pipe.vae.encoder, pipe.vae.decoder]
    assert all(kw == {"mode": "max-autotune"} for _, kw in compiled)
    with pytest.raises(ValueError, match="unknown torch.compile mode"):
        pipe.optimize(compile="fastest")


def test_quantizer_codes_do_not_depend_on_the_chunking(pipe, monkeypatch):
    g = torch.Generator().manual_seed(1)
    z = torch.randn(3, 3, 16, 16, generator=g) * 2
    quant = pipe.vae.quantize
    assert isinstance(quant, OfficialVectorQuantizer)
    zq, _, (_, _, idx) = quant(z)
    monkeypatch.setattr(OfficialVectorQuantizer, "max_distance_elements", 7 * quant.n_e)  # 7-row chunks
    zq_c, _, (_, _, idx_c) = quant(z)
    assert torch.equal(idx, idx_c)
    assert torch.equal(zq, zq_c)


@pytest.mark.parametrize("scale", [4.41, 0.3])
def test_rescale_latents_is_an_exact_change_of_coordinates(pipe, scale):
    """``rescale_latents(s)``: ``encode`` gives ``s·h``, the same codes are chosen, ``decode`` gives the same
    image (the compat VQ-f4's official weights; float32 rounding only)."""
    from zoomldm.models.autoencoder import rescale_latents

    g = torch.Generator().manual_seed(2)
    img = torch.rand(2, 3, pipe.config.image_size, pipe.config.image_size, generator=g) * 2 - 1
    with torch.no_grad():
        h = pipe.vae.encode(img).latents
        _, _, (_, _, codes) = pipe.vae.quantize(h)
        image = pipe.vae.decode(h).sample
        rescale_latents(pipe.vae, scale)
        h2 = pipe.vae.encode(img).latents
        _, _, (_, _, codes2) = pipe.vae.quantize(h2)
        assert torch.allclose(h2, scale * h, rtol=1e-5, atol=1e-6)
        assert torch.equal(codes, codes2)
        assert (pipe.vae.decode(h2).sample - image).abs().max() < 1e-4


@pytest.mark.parametrize("scale", [0.0, -1.0, float("nan"), float("inf")])
def test_rescale_latents_refuses_a_bad_factor(pipe, scale):
    from zoomldm.models.autoencoder import rescale_latents

    with pytest.raises(ValueError, match="positive finite"):
        rescale_latents(pipe.vae, scale)
