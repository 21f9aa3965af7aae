/**
 * @file `diffuse/io`: files. safetensors (a lazy reader, a streaming atomic writer), diffusers'
 * folder layout (model folders, scheduler_config.json, a pipeline's model_index.json; loading a
 * folder into a model of diffuse/models and saving one back), PNG images and grids, videos (GIF
 * and PNG frame strips), and small raster plots.
 *
 * The safetensors format helpers (safetensors-format.ts) and the Python-JSON writer behind the
 * config files stay internal.
 */

// ---- safetensors ----
export {
  floatBitsToHalf, MAX_HEADER_BYTES, parseSafetensors, parseSafetensorsHeader,
  SafetensorsError, SafetensorsFile, serializeSafetensors, writeSafetensors,
  type ReadableDtype, type ReadOptions as SafetensorsReadOptions, type SafetensorsDtype,
  type SafetensorsEntry, type SafetensorsHeader, type SafetensorsRule, type TensorData,
  type TensorInput,
} from './safetensors.js';

// ---- diffusers folders ----
export {
  CONFIG_NAME, DiffusersFolderError, loadModel, MODEL_INDEX_NAME, readModelFolder,
  readModelIndex, readSchedulerConfig, saveModel, SCHEDULER_CONFIG_NAME, WEIGHTS_INDEX_NAME,
  WEIGHTS_NAME, writeModelIndex, writeSchedulerConfig, type ComponentSpec, type ConfigFile,
  type Json, type LoadModelOptions, type ModelClass, type ModelFolder, type ModelIndex,
  type ReadModelOptions, type SaveModelOptions,
} from './diffusers.js';

// ---- files ----
export { FileKindError } from './files.js';

// ---- images, videos and plots ----
export {
  decodePng, encodePng, imageGrid, readPng, writePng, type Image,
} from './png.js';
export {
  encodeGif, frameStrip, videoFrames, videoGrid, writeGif, writeVideo, type GifOptions,
  type VideoOptions,
} from './video.js';
export {
  linePlot, scatterPanels, type LinePlotOptions, type LineSeries, type Rgb, type ScatterPanel,
} from './plot.js';
