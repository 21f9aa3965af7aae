/**
 * @file `diffuse/data`: datasets. Image datasets in memory (MNIST from the `mnist` package, a
 * folder of PNGs) with the seeded batch order training uses, Moving MNIST clips generated from
 * a seed, and the analytic data the samplers are tested on: Gaussian mixtures with their exact
 * denoiser, 2-D toys, and metrics against them.
 *
 * The dense linear algebra behind the mixtures (data/analytic/linalg.ts) stays internal.
 */

// ---- image datasets ----
// A dataset batch is exported as ImageBatch: diffuse/diffusion's Batch is a sampler's batch.
export {
  batchAt, datasetSize, subset, type Batch as ImageBatch, type ImageDataset,
} from './dataset.js';
export { DatasetError, loadImageFolder } from './image-folder.js';
export { loadMnist, MNIST_HELD_OUT, mnistSplits } from './mnist.js';

// ---- video datasets ----
export {
  MOVING_MNIST_MAX_SPEED, MOVING_MNIST_MIN_SPEED, movingMnistBatch, movingMnistClip,
  movingMnistGlyphSide, movingMnistSet, type MovingMnistBatch, type MovingMnistClip,
  type MovingMnistOptions,
} from './moving-mnist.js';

// ---- analytic data: the exact oracle, toys, metrics ----
export { GaussianMixture, randomBasis, type MixtureComponent } from './analytic/mixture.js';
export { seededRandom } from './analytic/random.js';
export {
  checkerboard, eightGaussians, eightGaussiansMixture, sampleToy2D, swissRoll, twoMoons,
  type Toy2D,
} from './analytic/toy2d.js';
export {
  assignComponents, componentFrequencies, momentErrors, slicedWasserstein, subspaceResiduals,
} from './analytic/metrics.js';
