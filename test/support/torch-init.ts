/**
 * @file The "seeded random weights" of the golden models, regenerated bit for bit from the seed,
 * so the repository ships the small golden files and not the 30 MB of weights.
 *
 * The golden weights (see test/data/golden/README.md) were made by diffusers 0.31.0 on
 * torch 1.13.1 (CPU): `torch.manual_seed(seed)`, `cls(**config)` with PyTorch's default init,
 * then every parameter listed in weights_provenance.json `perturbed` gets
 * `p += 0.1 * randn(p.shape, generator=torch.Generator().manual_seed(seed + 1))`, in
 * `named_parameters()` order.
 *
 * Default init (torch 1.13, torch/nn/modules/{conv,linear,sparse,normalization}.py):
 * - Conv2d / Linear: weight kaiming_uniform_(a = sqrt(5)), i.e. uniform(-b, b) with
 *   b = sqrt(3) * sqrt(2 / (1 + a^2)) / sqrt(fan_in); then bias uniform(-1/sqrt(fan_in), same).
 * - Embedding: weight normal_(0, 1), the same kernel as randn.
 * - GroupNorm / LayerNorm: weight 1, bias 0; no draws.
 * Each module draws when it is constructed, so what matters is the order in which diffusers'
 * constructors build their submodules, which is not always the order they are registered in
 * (and so not state_dict order): AttnDownBlock2D builds resnet 0, attention 0, resnet 1, ... but
 * registers `attentions` before `resnets`; Decoder builds its mid block before its up blocks.
 * The plans below follow diffusers v0.31.0 (unets/unet_2d.py, unets/unet_2d_blocks.py,
 * resnet.py, attention_processor.py, embeddings.py, attention.py, normalization.py,
 * transformers/dit_transformer_2d.py, autoencoders/autoencoder_kl.py, autoencoders/vae.py) for
 * the options the golden configs use; other options throw rather than guess.
 */
import { TorchGenerator } from '../../src/engine/random/torch.js';

/** One float32 tensor, in the shape of the safetensors writer's input. */
export interface F32Tensor {
  dtype: 'F32';
  shape: number[];
  data: Float32Array;
}

/** The parts of weights_provenance.json that regeneration needs. */
export interface WeightsProvenance {
  seed: number;
  perturbed: string[];
  num_params: number;
  /** Every state_dict key with its shape, in state_dict (= named_parameters) order. */
  state_dict_keys_and_shapes: Record<string, number[]>;
}

/** A model config.json: `_class_name` picks the plan. */
export type ModelConfig = { _class_name: string } & Record<string, unknown>;

// ---------------------------------------------------------------------------------------------
// Init plans: the parameterised modules in construction order.

type InitStep =
  | { kind: 'fanIn'; name: string; weight: number[]; fanIn: number; bias: boolean }
  | { kind: 'normal'; name: string; shape: number[] }
  | { kind: 'affine'; name: string; channels: number };

/** Records modules as diffusers constructs them; `name` is the module's state_dict prefix. */
class InitPlan {
  readonly steps: InitStep[] = [];

  conv(name: string, inC: number, outC: number, k: number, bias = true): void {
    this.steps.push({ kind: 'fanIn', name, weight: [outC, inC, k, k], fanIn: inC * k * k, bias });
  }

  linear(name: string, inF: number, outF: number, bias = true): void {
    this.steps.push({ kind: 'fanIn', name, weight: [outF, inF], fanIn: inF, bias });
  }

  embedding(name: string, n: number, dim: number): void {
    this.steps.push({ kind: 'normal', name, shape: [n, dim] });
  }

  /** GroupNorm(affine=True) or LayerNorm(elementwise_affine=True): constant, no draws. A norm
   * without parameters is not recorded. */
  norm(name: string, channels: number): void {
    this.steps.push({ kind: 'affine', name, channels });
  }
}

/** The config value `key`, checked to be of the type of `example`. */
function get<T>(config: ModelConfig, key: string, example: T): T {
  const v = config[key];
  const ok = Array.isArray(example) ? Array.isArray(v) : typeof v === typeof example;
  if (!ok) throw new Error(`${config._class_name} config: ${key} = ${JSON.stringify(v)}`);
  return v as T;
}

/** Throws unless config[key] is one of `allowed`: options the plans do not model. */
function only(config: ModelConfig, key: string, ...allowed: unknown[]): void {
  const v = config[key] ?? null;
  if (!allowed.includes(v)) {
    throw new Error(`torch-init: ${config._class_name} ${key} = ${JSON.stringify(v)} ` +
      `is not supported (only ${JSON.stringify(allowed)})`);
  }
}

/** ResnetBlock2D (resnet.py), time_embedding_norm "default": norm1, conv1, time_emb_proj,
 * norm2, conv2, then a 1x1 conv_shortcut when the channel count changes. */
function resnet(p: InitPlan, name: string, inC: number, outC: number, temb: number | null): void {
  p.norm(`${name}.norm1`, inC);
  p.conv(`${name}.conv1`, inC, outC, 3);
  if (temb !== null) p.linear(`${name}.time_emb_proj`, temb, outC);
  p.norm(`${name}.norm2`, outC);
  p.conv(`${name}.conv2`, outC, outC, 3);
  if (inC !== outC) p.conv(`${name}.conv_shortcut`, inC, outC, 1);
}

/** Attention (attention_processor.py) as the UNet blocks build it: group_norm (when
 * `groupNorm`), to_q, to_k, to_v, to_out.0, all with bias. */
function attention(p: InitPlan, name: string, dim: number, groupNorm: boolean): void {
  if (groupNorm) p.norm(`${name}.group_norm`, dim);
  for (const proj of ['to_q', 'to_k', 'to_v', 'to_out.0']) p.linear(`${name}.${proj}`, dim, dim);
}

/** UNetMidBlock2D with one layer: resnet 0, then (attention 0, resnet 1). */
function midBlock(p: InitPlan, name: string, c: number, temb: number | null, attn: boolean): void {
  resnet(p, `${name}.resnets.0`, c, c, temb);
  if (attn) attention(p, `${name}.attentions.0`, c, true);
  resnet(p, `${name}.resnets.1`, c, c, temb);
}

/** Down blocks with resnets (interleaved with attentions for Attn*) then a 3x3 stride-2 conv. */
function downBlock(p: InitPlan, name: string, type: string, layers: number, inC: number,
  outC: number, temb: number | null, downsample: boolean): void {
  const attn = type === 'AttnDownBlock2D';
  if (!attn && type !== 'DownBlock2D' && type !== 'DownEncoderBlock2D') {
    throw new Error(`torch-init: down block ${type} is not supported`);
  }
  for (let i = 0; i < layers; i++) {
    resnet(p, `${name}.resnets.${i}`, i === 0 ? inC : outC, outC, temb);
    if (attn) attention(p, `${name}.attentions.${i}`, outC, true);
  }
  if (downsample) p.conv(`${name}.downsamplers.0.conv`, outC, outC, 3);
}

/** Up blocks; `skip` gives the skip-connection channels of resnet i (UNet only). */
function upBlock(p: InitPlan, name: string, type: string, layers: number, resnetIn: number,
  outC: number, temb: number | null, upsample: boolean, skip: (i: number) => number): void {
  const attn = type === 'AttnUpBlock2D';
  if (!attn && type !== 'UpBlock2D' && type !== 'UpDecoderBlock2D') {
    throw new Error(`torch-init: up block ${type} is not supported`);
  }
  for (let i = 0; i < layers; i++) {
    resnet(p, `${name}.resnets.${i}`, (i === 0 ? resnetIn : outC) + skip(i), outC, temb);
    if (attn) attention(p, `${name}.attentions.${i}`, outC, true);
  }
  if (upsample) p.conv(`${name}.upsamplers.0.conv`, outC, outC, 3);
}

/** UNet2DModel (unets/unet_2d.py): conv_in, time_embedding, down blocks, mid block, up blocks,
 * conv_norm_out, conv_out. */
function unet2dPlan(config: ModelConfig): InitPlan {
  only(config, 'time_embedding_type', 'positional');
  only(config, 'class_embed_type', null);
  only(config, 'num_class_embeds', null);
  only(config, 'resnet_time_scale_shift', 'default');
  only(config, 'downsample_type', 'conv');
  only(config, 'upsample_type', 'conv');
  only(config, 'add_attention', true);
  only(config, 'attn_norm_num_groups', null);
  const ch = get(config, 'block_out_channels', [0]);
  const layers = get(config, 'layers_per_block', 0);
  const down = get(config, 'down_block_types', ['']);
  const up = get(config, 'up_block_types', ['']);
  const temb = ch[0]! * 4;
  const last = ch.length - 1;
  const p = new InitPlan();
  p.conv('conv_in', get(config, 'in_channels', 0), ch[0]!, 3);
  p.linear('time_embedding.linear_1', ch[0]!, temb);
  p.linear('time_embedding.linear_2', temb, temb);
  let outC = ch[0]!;
  down.forEach((type, i) => {
    const inC = outC;
    outC = ch[i]!;
    downBlock(p, `down_blocks.${i}`, type, layers, inC, outC, temb, i !== last);
  });
  midBlock(p, 'mid_block', ch[last]!, temb, true);
  const rev = [...ch].reverse();
  outC = rev[0]!;
  up.forEach((type, i) => {
    const prev = outC;
    outC = rev[i]!;
    const inC = rev[Math.min(i + 1, last)]!;
    // resnet i concatenates a skip: `in_channels` for the last one, `out_channels` before it
    const skip = (j: number) => (j === layers ? inC : outC);
    upBlock(p, `up_blocks.${i}`, type, layers + 1, prev, outC, temb, i !== last, skip);
  });
  p.norm('conv_norm_out', ch[0]!);
  p.conv('conv_out', ch[0]!, get(config, 'out_channels', 0), 3);
  return p;
}

/** AutoencoderKL (autoencoders/autoencoder_kl.py, vae.py): Encoder (conv_in, down blocks, mid
 * block, conv_norm_out, conv_out to 2 x latent channels), Decoder (conv_in, mid block *before*
 * the up blocks, conv_norm_out, conv_out), then quant_conv and post_quant_conv. */
function autoencoderKLPlan(config: ModelConfig): InitPlan {
  only(config, 'mid_block_add_attention', true);
  only(config, 'use_quant_conv', true);
  only(config, 'use_post_quant_conv', true);
  const ch = get(config, 'block_out_channels', [0]);
  const layers = get(config, 'layers_per_block', 0);
  const latent = get(config, 'latent_channels', 0);
  const last = ch.length - 1;
  const p = new InitPlan();

  p.conv('encoder.conv_in', get(config, 'in_channels', 0), ch[0]!, 3);
  let outC = ch[0]!;
  get(config, 'down_block_types', ['']).forEach((type, i) => {
    const inC = outC;
    outC = ch[i]!;
    downBlock(p, `encoder.down_blocks.${i}`, type, layers, inC, outC, null, i !== last);
  });
  midBlock(p, 'encoder.mid_block', ch[last]!, null, true);
  p.norm('encoder.conv_norm_out', ch[last]!);
  p.conv('encoder.conv_out', ch[last]!, 2 * latent, 3);

  p.conv('decoder.conv_in', latent, ch[last]!, 3);
  midBlock(p, 'decoder.mid_block', ch[last]!, null, true);
  const rev = [...ch].reverse();
  outC = rev[0]!;
  get(config, 'up_block_types', ['']).forEach((type, i) => {
    const prev = outC;
    outC = rev[i]!;
    upBlock(p, `decoder.up_blocks.${i}`, type, layers + 1, prev, outC, null, i !== last,
      () => 0);
  });
  p.norm('decoder.conv_norm_out', ch[0]!);
  p.conv('decoder.conv_out', ch[0]!, get(config, 'out_channels', 0), 3);

  p.conv('quant_conv', 2 * latent, 2 * latent, 1);
  p.conv('post_quant_conv', latent, latent, 1);
  return p;
}

/** DiTTransformer2DModel (transformers/dit_transformer_2d.py): pos_embed.proj, then per
 * BasicTransformerBlock (attention.py, ada_norm_zero): norm1 = AdaLayerNormZero (timestep MLP,
 * label table with the extra CFG row, linear to 6 x dim), attn1, norm3 (no affine), ff; then
 * norm_out (no affine), proj_out_1, proj_out_2. */
function ditPlan(config: ModelConfig): InitPlan {
  only(config, 'norm_type', 'ada_norm_zero');
  only(config, 'norm_elementwise_affine', false);
  only(config, 'attention_bias', true);
  only(config, 'activation_fn', 'gelu-approximate');
  const heads = get(config, 'num_attention_heads', 0);
  const dim = heads * get(config, 'attention_head_dim', 0);
  const patch = get(config, 'patch_size', 0);
  const inC = get(config, 'in_channels', 0);
  const outC = (config['out_channels'] as number | null | undefined) ?? inC;
  const classes = get(config, 'num_embeds_ada_norm', 0);
  const p = new InitPlan();
  p.conv('pos_embed.proj', inC, dim, patch);
  for (let b = 0; b < get(config, 'num_layers', 0); b++) {
    const n = `transformer_blocks.${b}`;
    p.linear(`${n}.norm1.emb.timestep_embedder.linear_1`, 256, dim); // Timesteps(256)
    p.linear(`${n}.norm1.emb.timestep_embedder.linear_2`, dim, dim);
    // LabelEmbedding(class_dropout_prob=0.1 > 0): one more row, the null class of CFG
    p.embedding(`${n}.norm1.emb.class_embedder.embedding_table`, classes + 1, dim);
    p.linear(`${n}.norm1.linear`, dim, 6 * dim);
    attention(p, `${n}.attn1`, dim, false);
    p.linear(`${n}.ff.net.0.proj`, dim, 4 * dim); // FeedForward(mult=4): GELU's proj
    p.linear(`${n}.ff.net.2`, 4 * dim, dim);
  }
  p.linear('proj_out_1', dim, 2 * dim);
  p.linear('proj_out_2', dim, patch * patch * outC);
  return p;
}

const PLANS: Record<string, (config: ModelConfig) => InitPlan> = {
  UNet2DModel: unet2dPlan,
  AutoencoderKL: autoencoderKLPlan,
  DiTTransformer2DModel: ditPlan,
};

// ---------------------------------------------------------------------------------------------
// Running a plan.

/** kaiming_uniform_(a = sqrt(5))'s bound, in Python doubles as torch.nn.init computes it:
 * gain = sqrt(2 / (1 + a^2)), std = gain / sqrt(fan_in), bound = sqrt(3) * std. */
function kaimingBound(fanIn: number): number {
  const a = Math.sqrt(5);
  const gain = Math.sqrt(2 / (1 + a * a)); // a ** 2 in Python: pow(a, 2) = a * a, rounded once
  return Math.sqrt(3) * (gain / Math.sqrt(fanIn));
}

/** Default-initialised parameters of a plan, drawn from a generator seeded as
 * torch.manual_seed(seed) seeds the default one. */
function initialise(plan: InitPlan, seed: number): Map<string, F32Tensor> {
  const g = new TorchGenerator(seed);
  const out = new Map<string, F32Tensor>();
  const put = (name: string, shape: number[], data: Float32Array) => {
    if (out.has(name)) throw new Error(`torch-init: ${name} is built twice`);
    out.set(name, { dtype: 'F32', shape, data });
  };
  for (const s of plan.steps) {
    if (s.kind === 'fanIn') {
      const b = kaimingBound(s.fanIn);
      put(`${s.name}.weight`, s.weight, g.uniform(s.weight, -b, b));
      if (s.bias) {
        const bb = 1 / Math.sqrt(s.fanIn);
        put(`${s.name}.bias`, [s.weight[0]!], g.uniform([s.weight[0]!], -bb, bb));
      }
    } else if (s.kind === 'normal') {
      put(`${s.name}.weight`, s.shape, g.randn(s.shape));
    } else {
      put(`${s.name}.weight`, [s.channels], new Float32Array(s.channels).fill(1));
      put(`${s.name}.bias`, [s.channels], new Float32Array(s.channels));
    }
  }
  return out;
}

/**
 * The tensors of the golden folder's diffusion_pytorch_model.safetensors, bit for bit: default
 * init of `config._class_name` seeded with `provenance.seed`, then the perturbation. The map is
 * in state_dict order; it throws if the plan's names or shapes differ from the provenance's.
 */
export function regenerateWeights(config: ModelConfig,
  provenance: WeightsProvenance): Map<string, F32Tensor> {
  const planOf = PLANS[config._class_name];
  if (!planOf) throw new Error(`torch-init: no init plan for ${config._class_name}`);
  const built = initialise(planOf(config), provenance.seed);

  const keys = Object.entries(provenance.state_dict_keys_and_shapes);
  const out = new Map<string, F32Tensor>();
  for (const [name, shape] of keys) {
    const t = built.get(name);
    if (!t) throw new Error(`torch-init: ${config._class_name} plan has no ${name}`);
    if (t.shape.join() !== shape.join()) {
      throw new Error(`torch-init: ${name} is [${t.shape}], provenance says [${shape}]`);
    }
    out.set(name, t);
  }
  if (built.size !== out.size) {
    const extra = [...built.keys()].filter((k) => !out.has(k));
    throw new Error(`torch-init: plan builds tensors not in the provenance: ${extra.join(', ')}`);
  }

  // The perturbation: named_parameters order, which is the state_dict order of the keys (no
  // buffers are saved). p += 0.1 * randn: the product rounded to float32, then the sum.
  const perturbed = new Set(provenance.perturbed);
  const g = new TorchGenerator(provenance.seed + 1);
  const tenth = Math.fround(0.1); // torch casts the Python scalar to the tensor's float32
  for (const [name, t] of out) {
    if (!perturbed.delete(name)) continue;
    const noise = g.randn(t.shape);
    for (let i = 0; i < noise.length; i++) t.data[i] = t.data[i]! + Math.fround(tenth * noise[i]!);
  }
  if (perturbed.size > 0) throw new Error(`torch-init: unknown perturbed ${[...perturbed]}`);
  return out;
}
