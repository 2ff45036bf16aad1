"""The VQGAN: whole-image encoding (Chameleon) and the shapes world's patch-local encoding."""

import torch

from training_ref.vqgan import VQGAN, VQGANConfig


def _vq(local: bool) -> VQGAN:
    torch.manual_seed(0)
    cfg = VQGANConfig(resolution=32, ch=8, ch_mult=(1, 2, 2), num_res_blocks=1, z_channels=8, embed_dim=8,
                      n_embed=16, norm_groups=4, local_patches=local)
    return VQGAN(cfg).eval()


def test_local_patches_make_each_latent_depend_on_its_patch_only():
    vq = _vq(local=True)
    pixels = torch.rand(1, 3, 32, 32) * 2 - 1
    changed = pixels.clone()
    changed[:, :, 8:12, 4:8] = 1.0  # inside patch (row 2, column 1) of the 8x8 grid of 4x4 patches
    with torch.no_grad():
        a, b = vq.latents(pixels), vq.latents(changed)  # [1, D, 8, 8]
    moved = (a - b).abs().amax(1)[0] > 1e-6  # [8, 8]
    assert moved[2, 1] and moved.sum() == 1
    with torch.no_grad():  # and it is exactly the encoder applied to the patch alone
        alone = vq.quant_conv(vq.encoder(pixels[:, :, 8:12, 4:8]))[0, :, 0, 0]
    torch.testing.assert_close(a[0, :, 2, 1], alone)


def test_whole_image_encoding_sees_neighbours_and_roundtrips_shapes():
    vq = _vq(local=False)
    pixels = torch.rand(1, 3, 32, 32) * 2 - 1
    changed = pixels.clone()
    changed[:, :, 8:12, 4:8] = 1.0
    with torch.no_grad():
        moved = (vq.latents(pixels) - vq.latents(changed)).abs().amax(1)[0] > 1e-6
        codes = vq.encode(pixels)
        out = vq.decode(codes)
    assert moved.sum() > 1  # the receptive field spans neighbouring patches
    assert codes.shape == (1, 8, 8) and out.shape == (1, 3, 32, 32)
