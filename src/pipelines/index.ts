/**
 * @file `diffuse/pipelines`: the application layer, between the CLI and the libraries. Each
 * `diffuse` command is a thin parser over one of these: load a pipeline folder and sample it
 * (`loadPipeline`, `sampleImages`), train an image model (`train`, with the training methods'
 * options; `runAb` compares them at equal compute; `trainJoint` the multi-task model; `trainDdm`
 * decentralized experts as jobs on a back-end of diffuse/distributed), evaluate samplers by
 * MNIST-FID and class accuracy (`prepareMnistFid`, `evaluateRuns`), the 2-D toy demo, and the
 * classifier the metrics use; latent models (`trainVae`, `loadVae`, a pipeline's `vae`,
 * DiffuseVAE) and the other seed systems (D2NWG, MoLRG). `graphDenoiser` is the bridge from a traced model to the
 * samplers of diffuse/diffusion.
 *
 * Checkpoint files (checkpoint.ts: `train` writes and resumes them) and the MNIST-FID building
 * blocks in metrics.ts (feature statistics and their cache) stay internal; the CLI reaches
 * them only through the functions here.
 */

// ---- sampling ----
export {
  checkDestination, classCount, DEFAULT_MEMORY_LIMIT, guidanceClipWarning, loadPipeline,
  MemoryLimitError, NonFiniteError, sampleImages, sampleInBatches, writeSamples, type Pipeline,
  type SampleDestination, type SampleOptions, type SampleResult, type SampleStats,
} from './sample.js';
export { graphDenoiser, modelDenoiser, type GraphDenoiser, type ModelFn } from './graph-denoiser.js';
export { describeAccel, parseAccel, type Acceleration } from './accel.js';
export {
  createImageModel, familyOfClass, imageModelOf, MODEL_FAMILIES, presetNames, type ImageModel,
  type ModelFamily,
} from './image-models.js';

// ---- training and distillation (one loop: training-loop.ts) ----
export {
  METHOD_DEFAULTS, train, type Objective, type TrainEvents, type TrainOptions, type TrainResult,
} from './train.js';
export {
  abCsv, abPlot, abSummaryCsv, mnistEvaluator, readEvals, runAb, summarize, type AbEvents,
  type AbOptions, type AbRow, type AbSummary, type Arm, type Evaluation, type Evaluator,
} from './ab.js';
export {
  DISTILL_METHODS, distill, type DistillMethod, type DistillOptions, type DistillResult,
} from './distill.js';
export { studentSampling, type StudentRecord } from './student.js';
export {
  loadJointPipeline, sampleJoint, trainJoint, type JointPipeline, type JointSampleRequest,
  type JointSamples, type JointTrainOptions, type JointTrainResult,
} from './multi-task.js';

export {
  assembleEnsemble, compareEnsemble, ddmJobs, DDM_EXPERT_JOB, DDM_ROUTER_JOB, ensembleCsv, prepareDdm,
  readDdmRun, ROUTER_DEFAULTS, routerConfig, runDdmJob, trainDdm, type Clusters, type DdmEvents,
  type DdmOptions, type DdmResult, type EnsembleScore, type RouterOptions,
} from './ddm.js';
export {
  ENSEMBLE_PIPELINE_CLASS, ensembleModel, type EnsembleParts, type LoadedEnsemble,
} from './ensemble.js';
export { JOB_HANDLER_MODULE, runJob } from './jobs.js';
export {
  loadVideoPipeline, sampleVideos, trainVideo, VIDEO_PIPELINE_CLASS, type VideoPipeline,
  type VideoTrainOptions,
} from './video.js';
export {
  sampleLongVideo, sampleLongVideoRank, sampleLongVideoThreads, type ClipParallelOptions,
} from './video-infinity.js';
export {
  compareLongVideos, frameJumps, identityAgreement, LONG_VIDEO_MODES, segmentDigits, videoConsistency,
  type CompareRow, type FrameJumps, type LongVideoMode, type VideoConsistency,
} from './video-eval.js';

// ---- latent models: the VAE, latent pipelines, DiffuseVAE ----
export {
  RECONSTRUCTION_LOSSES, trainVae, VAE_PIPELINE_CLASS, VAE_PRESET_NAMES, vaeLoss, type VaeTrainOptions,
  type VaeTrainResult,
} from './vae.js';
export {
  latentCoder, latentScalingFactor, loadVae, reconstructionMse, type LatentCoder, type LoadedVae,
} from './latent.js';
export { LATENT_PIPELINE_CLASS } from './train.js';
export { pipelineImageShape } from './sample.js';
export {
  loadDiffuseVae, sampleDiffuseVae, slerpLatents, trainDiffuseVae, type DiffuseVaePipeline,
  type DiffuseVaeSampleOptions, type DiffuseVaeTrainOptions,
} from './diffusevae.js';

// ---- other seed systems: weights generation (D2NWG), low-rank mixtures (MoLRG), DiffDis,
// InvDiff, LDFaceNet, DivControl, EchoDistill ----
export { runD2nwg, runD2nwgMnist, type D2nwgOptions } from './d2nwg.js';
export { runMolrgSweep, type MolrgRow, type MolrgSweepOptions } from './molrg.js';
export { classifyDiffDis, evaluateDiffDis, trainDiffDis } from './diffdis.js';
export { runInvDiff, type InvDiffOptions } from './invdiff.js';
export { runLdfacenet, swapDigits, type LdfacenetOptions } from './ldfacenet.js';
export {
  adaptDivControl, controlDenoiser, loadDivControl, trainDivControl, type DivControlAdaptOptions,
  type DivControlPipeline, type DivControlTrainOptions,
} from './divcontrol.js';
export { evaluateDivControl, type DivControlEvalOptions } from './divcontrol-eval.js';
export {
  evaluateEchoDistill, trainEchoDistill, type EchoDistillOptions, type EchoEvalOptions,
} from './echodistill.js';

// ---- evaluation: MNIST-FID (the shipped classifier's features, not Inception-FID) ----
export {
  CSV_COLUMNS, evaluateRuns, floorLine, parseRuns, pipelineSource, prepareMnistFid, resultsCsv,
  resultsTable, scoreImages, speedQualityPlot, type ImageSource, type MnistFid,
  type MnistFidOptions, type Run, type RunResult, type Score,
} from './eval.js';

// ---- diffusion models as classifiers ----
export {
  CLASSIFY_DEFAULTS, classifyCsv, classifyImages, type ClassifyEvents, type ClassifyOptions,
  type ClassifyResult,
} from './classify.js';
export {
  PROBE_CSV_COLUMNS, PROBE_DEFAULTS, probeBlocks, probeCsv, probeHeatMap, probeSweep,
  type ProbeEvents, type ProbeOptions, type ProbeRow,
} from './probe.js';

// ---- encoding, translation and SDEdit (DPM-Encoder / CycleDiffusion) ----
export {
  checkCodesFit, classPreservation, decodeLatents, encodeImages, img2img, invertImages,
  LATENT_KEYS, LatentFileError, readLatents, reconstructionError, translateImages, writeLatents,
  writeRowsGrid, type ClassPreservation, type DecodeOptions, type EncodeOptions,
  type LatentCodes, type RunStats,
} from './encode.js';

// ---- classifier guidance and its experts (PPAP) ----
export { GUIDE_SPELLING, loadGuide, parseGuide, type GuideSpec, type LoadedGuide } from './guide.js';
export {
  EXPERT_METHODS, EXPERTS_DEFAULTS, EXPERTS_FILE, EXPERTS_FORMAT, ExpertsFileError, readExperts,
  trainExperts, type ExpertMethod, type ExpertReport, type ExpertsEvents, type ExpertsOptions,
  type ExpertsRecord, type TrainedExperts,
} from './experts.js';

// ---- the 2-D toy demo ----
export {
  sampleToy, TOY_DATASETS, toyDistance, trainToy, type ToyModel, type ToySampleOptions,
  type ToyTrainOptions,
} from './toy.js';

// ---- the MNIST classifier behind the metrics ----
export {
  CLASSIFIER_TRAIN_DEFAULTS, classifierSteps, saveClassifier, trainClassifier,
  type ClassifierTrainEvents, type ClassifierTrainOptions, type TrainedClassifier,
} from './classifier.js';

// ---- one ONNX file of a pipeline's denoiser, for other runtimes (the browser playground) ----
export {
  exportDenoiser, exportModelFolder, ExportPathError, type ExportedMeta, type ExportOptions,
} from './export.js';

// ---- weights stored at another precision ----
export { convertWeights, type ConvertResult, type WeightsDtype } from './convert.js';
