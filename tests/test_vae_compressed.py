"""pipelines/vae_compressed.py: the pruned and pixel-shuffle VAE decoders, alone and inside a pipeline."""

import json

import numpy as np
import pytest
import torch

from pipelines.loading import load_pipeline
from pipelines.tiny import tiny_pipeline, tiny_vae
from pipelines.vae_compressed import CompressedVAEDecoder


def _run(pipe, seed=0, **kw):
    kw.setdefault("num_inference_steps", 2)
    return pipe("a red circle", generator=torch.Generator().manual_seed(seed), output_type="np", **kw)


@pytest.mark.parametrize("block_type", ["resnet", "residual_conv"])
@pytest.mark.parametrize("channels, layers, factor", [((16,), 2, 8), ((16, 8), (2, 1), 8), ((16, 8, 8), (1, 0, 1), 4)])
def test_pixel_shuffle_decoder_shapes(channels, layers, factor, block_type):
    from pipelines import PixelShuffleVAEDecoder

    torch.manual_seed(0)
    dec = PixelShuffleVAEDecoder(block_out_channels=channels, layers_per_block=layers, upscale_factor=factor,
                                 norm_num_groups=4, block_type=block_type).eval()  # fmt: skip
    norms = [m for m in dec.modules() if isinstance(m, torch.nn.GroupNorm)]
    assert bool(norms) == (block_type == "resnet")  # residual_conv has no normalization at all
    z = torch.randn(2, 4, 6, 5)
    out = dec(z)
    assert out.shape == (2, 3, 6 * factor, 5 * factor) and dec.vae_scale_factor == factor
    assert torch.equal(out, dec.decode(z, return_dict=False)[0])
    expected = (layers,) * len(channels) if isinstance(layers, int) else layers
    assert dec.stage_layers == expected
    assert sum(len(s) for s in dec.stages) == sum(expected)
    # samples are decoded independently: changing one latent changes only its own image
    z2 = z.clone()
    z2[0, :, 0, 0] += 1.0
    diff = (dec(z2) - out).abs()
    assert diff[0].max() > 1e-4 and torch.allclose(dec(z2)[1], out[1], atol=1e-6)


def test_plain_resnet_forward_matches_diffusers_resnet_block():
    """The decoder's ResNet blocks skip ResnetBlock2D.forward's general path; outputs and gradients stay the same."""
    from diffusers.models.resnet import ResnetBlock2D

    from pipelines.vae_compressed import PlainResnetBlock2D, plain_resnet_forward

    torch.manual_seed(0)
    for cin, cout in ((8, 8), (8, 16)):  # without and with the shortcut conv
        stock = ResnetBlock2D(in_channels=cin, out_channels=cout, temb_channels=None, groups=4, eps=1e-6)
        plain = PlainResnetBlock2D(in_channels=cin, out_channels=cout, temb_channels=None, groups=4, eps=1e-6)
        plain.load_state_dict(stock.state_dict())  # same modules, same checkpoint keys
        x = torch.randn(2, cin, 5, 6, requires_grad=True)
        ref = stock(x, None)
        (gx_ref,) = torch.autograd.grad(ref.square().sum(), x)
        out = plain(x, None)
        (gx,) = torch.autograd.grad(out.square().sum(), x)
        assert torch.equal(out, ref) and torch.allclose(gx, gx_ref, atol=1e-6)
    timed = ResnetBlock2D(in_channels=8, out_channels=8, temb_channels=16, groups=4)
    with pytest.raises(ValueError, match="without time embedding"):
        plain_resnet_forward(timed, torch.randn(1, 8, 4, 4))


def test_with_plain_resnet_blocks_keeps_the_vae_decoders_outputs():
    from diffusers.models.resnet import ResnetBlock2D

    from pipelines.vae_compressed import with_plain_resnet_blocks

    vae = tiny_pipeline(0).vae.eval()
    plain = with_plain_resnet_blocks(vae)
    patched = [m for m in plain.decoder.modules() if type(m) is ResnetBlock2D and "forward" in vars(m)]
    assert patched and not any("forward" in vars(m) for m in vae.decoder.modules())  # the original is untouched
    z = torch.randn(2, vae.config.latent_channels, 4, 4, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(plain.decode(z).sample, vae.decode(z).sample)


@pytest.mark.parametrize("kwargs, match", [
    (dict(block_out_channels=()), "at least one stage"),
    (dict(block_out_channels=(16, 6)), r"multiples of norm_num_groups=4; \[6\]"),
    (dict(block_out_channels=(16, 8), layers_per_block=(1,)), "one int >= 0 per stage"),
    (dict(layers_per_block=-1), "int >= 0"),
    (dict(upscale_factor=6), "power of 2"),
    (dict(block_out_channels=(8, 8, 8, 8), upscale_factor=4), r"2\*\*\(stages - 1\) = 8"),
    (dict(block_type="plain"), "block_type must be 'resnet' or 'residual_conv'; got 'plain'"),
    (dict(block_out_channels=(16, 0), block_type="residual_conv"), r"must all be >= 1; got \[16, 0\]"),
])  # fmt: skip
def test_pixel_shuffle_decoder_bad_config(kwargs, match):
    from pipelines import PixelShuffleVAEDecoder

    kwargs = {"block_out_channels": (16,), "norm_num_groups": 4, **kwargs}
    with pytest.raises(ValueError, match=match):
        PixelShuffleVAEDecoder(**kwargs)


def test_pixel_shuffle_decoder_pipeline_round_trip(tmp_path):
    pipe = tiny_pipeline(0, compressed_decoder="pixel_shuffle")
    full = tiny_pipeline(0)
    a = _run(pipe).images
    assert a.shape == _run(full).images.shape and np.abs(a - _run(full).images).max() > 1e-3  # the new decoder ran
    pipe.save_pretrained(tmp_path)
    index = json.loads((tmp_path / "model_index.json").read_text())
    assert index["vae_decoder"] == ["pipelines.vae_compressed", "PixelShuffleVAEDecoder"]
    loaded = load_pipeline(str(tmp_path))
    assert type(loaded.vae_decoder).__name__ == "PixelShuffleVAEDecoder" and loaded.vae_scale_factor == 2
    assert np.array_equal(a, _run(loaded).images)


def test_pixel_shuffle_decoder_block_types_round_trip(tmp_path):
    """Both block types save and load with their config; a config without block_type (bundle v3's) is 'resnet'."""
    from pipelines import PixelShuffleVAEDecoder

    z = torch.randn(1, 4, 4, 4)
    for block_type in ("resnet", "residual_conv"):
        torch.manual_seed(0)
        dec = PixelShuffleVAEDecoder(block_out_channels=(16, 8), upscale_factor=4, norm_num_groups=4,
                                     block_type=block_type).eval()  # fmt: skip
        dec.save_pretrained(tmp_path / block_type)
        loaded = PixelShuffleVAEDecoder.from_pretrained(tmp_path / block_type).eval()
        assert loaded.config.block_type == block_type
        assert torch.equal(dec(z), loaded(z))
    cfg = json.loads((tmp_path / "resnet" / "config.json").read_text())
    del cfg["block_type"]
    (tmp_path / "resnet" / "config.json").write_text(json.dumps(cfg))
    assert PixelShuffleVAEDecoder.from_pretrained(tmp_path / "resnet").config.block_type == "resnet"


def test_pruned_decoder_norm_groups_override():
    vae = tiny_vae(channels=(8, 16))  # 4 groups
    with pytest.raises(ValueError, match="6 channels from 8, not a multiple of norm_num_groups=4"):
        CompressedVAEDecoder.from_vae(vae, 0.75)
    pruned = CompressedVAEDecoder.from_vae(vae, 0.75, norm_num_groups=2)
    assert pruned.config.block_out_channels == (6, 12) and pruned.config.norm_num_groups == 2
    z = torch.randn(1, 4, 8, 8)
    assert pruned(z).shape == vae.decode(z).sample.shape
    # the kept channels start from the VAE's first ones
    assert torch.equal(pruned.decoder.conv_in.weight, vae.decoder.conv_in.weight[:12])
    with pytest.raises(ValueError, match="norm_num_groups must be >= 1"):
        CompressedVAEDecoder.from_vae(vae, 0.5, norm_num_groups=0)
