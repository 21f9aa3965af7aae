// A model from the models layer: a small AutoencoderKL (Stable Diffusion's VAE, scaled down)
// with fresh weights, encoding images to latents and decoding them back in one compiled graph.
import { compile, HostArray, RngKey, type Tensor } from 'diffuse';
import { AUTOENCODER_KL_PRESETS, AutoencoderKL, readAutoencoderKLConfig } from 'diffuse/models';
import type { ParamsOf } from 'diffuse/nn';

export async function vaeTour() {
  // diffusers' config keys; readAutoencoderKLConfig checks them (a bad one throws a
  // ConfigError naming the key). Two blocks: 16x16 images -> 8x8 latents with 2 channels.
  const config = readAutoencoderKLConfig({
    ...AUTOENCODER_KL_PRESETS['tiny'], block_out_channels: [8, 16], norm_num_groups: 4,
    latent_channels: 2,
  });
  const vae = new AutoencoderKL(config);
  const params = vae.init(RngKey.fromSeed(0)); // torch's default initialisation, from a seed

  // Parameters are an input of the graph (a tree of tensors); ops.constant would bake them in.
  const roundTrip = compile((p: ParamsOf<AutoencoderKL>, x: Tensor) => {
    const posterior = vae.encode(p, x); // mean, logvar, std: [N, 2, 8, 8]
    const latent = vae.toLatent(posterior.mean); // what a latent diffusion model sees
    return { latent, decoded: vae.decode(p, vae.fromLatent(latent)) }; // [N, 3, 16, 16]
  });
  const images = new HostArray(RngKey.fromSeed(1).uniform(2 * 3 * 16 * 16).map((u) => 2 * u - 1),
    [2, 3, 16, 16]);
  const out = await roundTrip(params, images);
  await roundTrip.dispose();
  return { parameters: vae.numParams(), images: images.shape, latent: out.latent.shape,
    decoded: out.decoded.shape, finite: out.decoded.data.every(Number.isFinite) };
}
