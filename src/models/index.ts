/**
 * @file `diffuse/models`: the models, each with diffusers' config keys and parameter names,
 * its config reader, its presets and its class record for `loadModel` / `saveModel`
 * (diffuse/io). UNet2DModel, DiT (with Denoising Task Routing), DiT-MoE, Switch-DiT, the joint
 * image-label DiT of multi-task diffusion, AutoencoderKL, the MNIST classifier and the 2-D toy
 * MLP.
 *
 * The blocks the models are built from (ResnetBlock2D, the DiT blocks, the VAE's encoder and
 * decoder, ...) stay internal: their names and parameters follow diffusers, but their
 * constructors are shaped by the models that use them, not for use on their own.
 */

// ConfigError here is the model-config error; diffuse/diffusion has its own ConfigError for
// scheduler configs. Both have name 'ConfigError'.
export { ConfigError, DIFFUSERS_VERSION } from './config.js';

// ---- UNet2DModel ----
export {
  readUNet2DConfig, renameLegacyAttention, UNET2D_CLASS, UNET2D_DEFAULTS, UNET2D_PRESETS,
  UNet2DModel, type DecodeOptions, type DownBlockType, type EmbedOptions, type EncodeOptions,
  type Tap, type UNet2DCond, type UNet2DConfig, type UNet2DNode, type UNet2DOptions,
  type UNet2DState, type UpBlockType,
} from './unet2d.js';

// ---- DiT, DiT-MoE and Switch-DiT ----
export {
  checkDiTConfig, DIT_DEFAULTS, DIT_PRESETS, ditClass, ditInitialize, ditPreset,
  DiTTransformer2DModel, dropClassLabels, readDiTConfig, splitLearnedSigma, type DiTConfig,
  type DiTPresetName, type FfActivation, type KvSource, type TokenOptions,
} from './dit.js';
export {
  DIT_MOE_DEFAULTS, DIT_MOE_PRESETS, ditMoEClass, ditMoEPreset, DiTMoETransformer2DModel,
  readDiTMoEConfig, type DiTMoEConfig, type DiTMoEOptions, type DiTMoEOutput,
  type DiTMoEPresetName, type MoeRouting,
} from './dit-moe.js';
export {
  diffusionPriorLoss, linearAssignment, readSwitchDiTConfig, SWITCH_DIT_DEFAULTS,
  SWITCH_DIT_PRESETS, switchDiTClass, switchDiTPreset, switchPriorTable,
  SwitchDiTTransformer2DModel, type SwitchDiTConfig, type SwitchDiTOutput,
  type SwitchDiTPresetName,
} from './switch-dit.js';

// ---- AutoencoderKL ----
export {
  AUTOENCODER_KL_DEFAULTS, AUTOENCODER_KL_PRESETS, AutoencoderKL, autoencoderKLClass,
  readAutoencoderKLConfig, renameLegacyVaeAttention, type AutoencoderKLConfig,
  type DiagonalGaussian,
} from './autoencoder-kl.js';

// ---- classifier ----
export {
  CLASSIFIER_DEFAULTS, CLASSIFIER_PRESETS, classifierClass, crossEntropy, DiffuseClassifier,
  readClassifierConfig, type ClassifierConfig,
} from './classifier.js';

// ---- 2-D toy MLP ----
export { TOY_MLP_DEFAULTS, ToyMlp, toyMlpClass, type ToyMlpConfig } from './toy-mlp.js';
export { DTR_TASKS, dtrMask, dtrStart, routedBlock, type TaskRouting } from './dit-routing.js';
export {
  JointDiTModel, jointDiTClass, JOINT_DIT_DEFAULTS, readJointDiTConfig, type JointDiTConfig,
} from './joint-dit.js';
