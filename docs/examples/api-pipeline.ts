// Load a diffusers pipeline folder and sample it: first with one call of the pipeline layer,
// then piece by piece (model index, U-Net, scheduler spec), as a program that builds its own
// sampling loop would.
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseScheduler, SAMPLER_NAMES } from 'diffuse/diffusion';
import { encodePng, imageGrid, loadModel, readModelIndex, readSchedulerConfig } from 'diffuse/io';
import { UNET2D_CLASS } from 'diffuse/models';
import { loadPipeline, sampleImages } from 'diffuse/pipelines';

// The class-conditional MNIST U-Net shipped in the package (a DDPMPipeline folder:
// model_index.json, unet/, scheduler/).
const root = import.meta.resolve('diffuse/package.json');
const shipped = fileURLToPath(new URL('models/mnist-unet', root));

export async function pipelineTour(dir = shipped) {
  // 1. The pipeline layer: load the folder, draw four 7s with DPM-Solver++ 2M in 10 steps.
  const pipeline = await loadPipeline(dir);
  const { images, warnings } = await sampleImages(pipeline, {
    sampler: 'dpm++2m', steps: 10, n: 4, classes: [7], guidance: 1.5, seed: 0,
  });
  const png = encodePng(imageGrid(images, { cols: 4 })); // [4, 1, 32, 32] in [-1, 1] -> a row

  // 2. The same folder, piece by piece. model_index.json names the components ...
  const index = await readModelIndex(dir); // unet: UNet2DModel, scheduler: DDPMScheduler
  // ... unet/ holds config.json and the weights, read into a UNet2DModel and its parameters ...
  const unet = await loadModel(join(dir, 'unet'), UNET2D_CLASS);
  // ... and scheduler/scheduler_config.json parses once into an immutable SchedulerSpec. Any
  // sampler of its family runs on it (samplerSpec swaps the class, as diffusers' from_config).
  const scheduler = parseScheduler((await readSchedulerConfig(dir)).config);

  return {
    shape: images.shape, png, warnings, components: Object.keys(index.components).sort(),
    parameters: unet.model.numParams(), classes: unet.config.num_class_embeds,
    scheduler, samplers: SAMPLER_NAMES,
  };
}
