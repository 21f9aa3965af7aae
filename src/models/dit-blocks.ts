/**
 * @file DiT's blocks (Peebles & Xie 2023, in diffusers v0.31's names), which dit.ts and
 * dit-moe.ts build on: the sin-cos tables, the timestep and label embeddings,
 * the adaLN-Zero block with a pluggable MLP (DiTBlock: with diffusers' FeedForward), and
 * DiTBase (patch embedding, conditioning, final layer, unpatchify).
 */
import * as ops from '../engine/ops.js';
import { HostArray } from '../engine/host.js';
import { ShapeError } from '../engine/shape.js';
import type { Tensor } from '../engine/tensor.js';
import { MultiHeadAttention } from '../nn/attention.js';
import { Conv2d, Embedding, LayerNorm, Linear } from '../nn/layers.js';
import { Module, type ParamsOf } from '../nn/module.js';
import { ConfigError } from './config.js';
import type { DiTConfig, FfActivation } from './dit-config.js';
import { TimestepEmbedding } from './embeddings.js';

export { TimestepEmbedding };

// ---- host-side tables ----

/**
 * diffusers' get_2d_sincos_pos_embed as a [1, gridH * gridW, dim] float32 table, token
 * m = row * gridW + col. As in diffusers, the first half of the channels encodes the column
 * (its `emb_h` is built from the meshgrid's first plane, which holds w), the second the row;
 * each half is [sin, cos] at frequencies 10000^(-i / (dim / 4)). Coordinates are float32, the
 * rest float64, then rounded, as numpy computes it.
 */
export function sincosPosEmbed2d(dim: number, gridH: number, gridW: number, baseSize: number,
  interpolationScale = 1): HostArray<'float32'> {
  if (dim % 4 !== 0) {
    throw new ConfigError(`2-D sin-cos positions: dim must be a multiple of 4, got ${dim}`);
  }
  const q = dim / 4;
  const omega = Array.from({ length: q }, (_, i) => 1 / 10000 ** (i / q));
  const f = Math.fround;
  const coord = (i: number, g: number) => f(f(i / f(g / baseSize)) / f(interpolationScale));
  const out = new Float32Array(gridH * gridW * dim);
  for (let r = 0; r < gridH; r++) {
    for (let c = 0; c < gridW; c++) {
      const o = (r * gridW + c) * dim;
      const [x, y] = [coord(c, gridW), coord(r, gridH)];
      for (let i = 0; i < q; i++) {
        out[o + i] = Math.sin(x * omega[i]!);
        out[o + q + i] = Math.cos(x * omega[i]!);
        out[o + 2 * q + i] = Math.sin(y * omega[i]!);
        out[o + 3 * q + i] = Math.cos(y * omega[i]!);
      }
    }
  }
  return new HostArray(out, [1, gridH * gridW, dim]);
}

/** Frequencies of diffusers' Timesteps(256, flip_sin_to_cos=True, downscale_freq_shift=1),
 *  rounded step by step as torch computes them in float32: exp(-ln(1e4) * i / 127). The
 *  exponents match torch 1.13's bit for bit; its vectorised expf is 1 ulp off the correctly
 *  rounded value used here for 14 of the 128 (effect on the golden output < 1e-6). */
const TIME_FREQS = (() => {
  const f = Math.fround;
  const s = f(-Math.log(10000));
  const freqs = Float32Array.from({ length: 128 }, (_, i) => f(Math.exp(f(f(s * i) / 127))));
  return new HostArray(freqs, [128]);
})();

// ---- embeddings and conditioning ----

/** The per-sample inputs every block's conditioning is built from. */
export interface DiTCond {
  /** Sinusoidal timestep features [N, 256]: [cos, sin] (flip_sin_to_cos). */
  tproj: Tensor;
  /** int64 [N]; num_embeds_ada_norm is the CFG null class. */
  classLabels: Tensor;
  /** Model times [N], float32 (timestep routing reads them). */
  time: Tensor;
  /** Added to every label embedding [N, D] (condition corruption, CEP; training only). */
  labelShift?: Tensor;
}

/** Timesteps [N] (int64 or float) and labels [N] to the conditioning inputs. */
export function ditCond(timestep: Tensor, classLabels: Tensor, labelShift?: Tensor): DiTCond {
  const time = ops.cast(timestep, 'float32');
  const args = ops.mul(ops.unsqueeze(time, 1), ops.constant(TIME_FREQS)); // [N, 128]
  return { tproj: ops.concat([ops.cos(args), ops.sin(args)], 1), classLabels, time, // [N, 256]
    ...(labelShift ? { labelShift } : {}) };
}

export class LabelEmbedding extends Module {
  readonly embedding_table: Embedding;
  /** diffusers' class_dropout_prob 0.1 > 0 adds the null-class row. */
  constructor(numClasses: number, dim: number) {
    super();
    this.embedding_table = new Embedding(numClasses + 1, dim);
  }
}

export class CombinedTimestepLabelEmbeddings extends Module {
  readonly timestep_embedder: TimestepEmbedding;
  readonly class_embedder: LabelEmbedding;
  constructor(numClasses: number, dim: number) {
    super();
    this.timestep_embedder = new TimestepEmbedding(256, dim);
    this.class_embedder = new LabelEmbedding(numClasses, dim);
  }
  /** The conditioning vector [N, D] = MLP(timestep features) + label embedding. */
  forward(p: ParamsOf<CombinedTimestepLabelEmbeddings>, c: DiTCond): Tensor {
    const t = this.timestep_embedder.forward(p.timestep_embedder, c.tproj); // [N, D]
    const y = ops.gather(p.class_embedder.embedding_table.weight, c.classLabels, 0); // [N, D]
    return ops.add(t, c.labelShift ? ops.add(y, c.labelShift) : y);
  }
}

export class AdaLayerNormZero extends Module {
  readonly emb: CombinedTimestepLabelEmbeddings;
  readonly linear: Linear;
  constructor(dim: number, numClasses: number) {
    super();
    this.emb = new CombinedTimestepLabelEmbeddings(numClasses, dim);
    this.linear = new Linear(dim, 6 * dim);
  }
  /** shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp, each [N, 1, D]. */
  modulation(p: ParamsOf<AdaLayerNormZero>, c: DiTCond): Tensor[] {
    const emb = this.emb.forward(p.emb, c); // [N, D]
    const mods = this.linear.forward(p.linear, ops.silu(emb)); // [N, 6D]
    return ops.split(mods, 6, 1).map((m) => ops.unsqueeze(m, 1));
  }
}

const modulate = (x: Tensor, shift: Tensor, scale: Tensor): Tensor =>
  ops.add(ops.mul(x, ops.add(scale, 1)), shift);

// ---- the adaLN-Zero block ----

/** Maps the fresh keys and values of a block's tokens ([N, H, T', Dh] each) to those the
 *  queries attend over, e.g. a full cache with these rows refreshed (RAS). They come without
 *  their projections' biases, as selfAttention uses them. */
export type KvSource = (k: Tensor, v: Tensor, block: number) => { k: Tensor; v: Tensor };

/**
 * Self-attention whose projections write the heads directly, [N, H, T, Dh] each (a product of
 * x [N, 1, T, D] with the per-head weights [H, D, Dh]), instead of one [N, T, 3D] product that
 * is transposed and split: 1.10x and 1.08x on the pixel and latent DiT forwards at batch 64.
 * The scale goes into the query's weights. The keys' bias is left out (it adds one constant
 * per query row, which softmax drops) and the values' bias moves into the output projection's
 * (rows of the probabilities sum to one): two passes over [N, H, T, Dh] saved. `kv` sees and
 * returns keys and values in that form.
 */
export function selfAttention(attn: MultiHeadAttention, p: ParamsOf<MultiHeadAttention>, x: Tensor,
  kv?: (k: Tensor, v: Tensor) => { k: Tensor; v: Tensor }): Tensor {
  const [n, t] = x.shape as [number, number];
  const [heads, dim] = [attn.heads, attn.dim];
  const dh = dim / heads;
  const scale = 1 / Math.sqrt(dh);
  const x4 = ops.reshape(x, [n, 1, t, dim]);
  const project = (w: Tensor, b: Tensor | undefined): Tensor => { // [N, H, T, Dh]
    const y = ops.matmul(x4, ops.transpose(ops.reshape(w, [heads, dh, dim]), [0, 2, 1]));
    return b ? ops.add(y, ops.reshape(b, [heads, 1, dh])) : y;
  };
  const q = project(ops.mul(p.to_q.weight, scale), p.to_q.bias && ops.mul(p.to_q.bias, scale));
  const [k0, v0] = [project(p.to_k.weight, undefined), project(p.to_v.weight, undefined)];
  const { k, v } = kv ? kv(k0, v0) : { k: k0, v: v0 };
  const o = ops.attention(q, k, v, { scale: 1 }); // [N, H, T, Dh]
  const merged = ops.reshape(ops.transpose(o, [0, 2, 1, 3]), [n, t, dim]); // [N, T, D]
  const [wo, bo] = [p.to_out[0]!.weight, p.to_out[0]!.bias];
  if (!p.to_v.bias) return ops.linear(merged, wo, bo);
  const vb = ops.reshape(ops.matmul(wo, ops.reshape(p.to_v.bias, [dim, 1])), [dim]); // wo bv
  return ops.linear(merged, wo, bo ? ops.add(bo, vb) : vb);
}

/** The parameters every adaLN-Zero block has, whatever its MLP. */
export type AdaLnZeroParams = {
  norm1: ParamsOf<AdaLayerNormZero>;
  attn1: ParamsOf<MultiHeadAttention>;
  norm3?: ParamsOf<LayerNorm>;
};

/** BasicTransformerBlock (norm_type 'ada_norm_zero') with its MLP `ff` left to the subclass:
 *  FeedForward here, a routed mixture of experts in dit-moe.ts. */
export class AdaLnZeroBlock<F extends Module> extends Module {
  readonly norm1: AdaLayerNormZero;
  readonly attn1: MultiHeadAttention;
  /** Present only with norm_elementwise_affine (otherwise it has no parameters). */
  readonly norm3?: LayerNorm;
  readonly ff: F;
  readonly normEps: number;
  constructor(cfg: DiTConfig, ff: F) {
    super();
    const dim = cfg.num_attention_heads * cfg.attention_head_dim;
    this.norm1 = new AdaLayerNormZero(dim, cfg.num_embeds_ada_norm);
    this.attn1 = new MultiHeadAttention(dim,
      { heads: cfg.num_attention_heads, bias: cfg.attention_bias });
    if (cfg.norm_elementwise_affine) this.norm3 = new LayerNorm(dim, cfg.norm_eps);
    this.ff = ff;
    this.normEps = cfg.norm_eps;
  }

  /** Everything before the MLP: returns the residual stream after attention, the modulated
   *  MLP input and the MLP's gate; the block's output is x + gate * mlp(mlpIn). */
  pre(p: AdaLnZeroParams, x: Tensor, c: DiTCond, index: number, kv?: KvSource):
    { x: Tensor; mlpIn: Tensor; gate: Tensor } {
    const [shiftMsa, scaleMsa, gateMsa, shiftMlp, scaleMlp, gate] =
      this.norm1.modulation(p.norm1, c);
    const h = modulate(ops.layerNorm(x, { eps: 1e-6 }), shiftMsa!, scaleMsa!); // [N, T, D]
    const a = selfAttention(this.attn1, p.attn1, h, kv && ((k, v) => kv(k, v, index)));
    const x1 = ops.add(x, ops.mul(gateMsa!, a)); // [N, T, D]
    const n3 = ops.layerNorm(x1,
      { eps: this.normEps, scale: p.norm3?.weight, bias: p.norm3?.bias }); // [N, T, D]
    return { x: x1, mlpIn: modulate(n3, shiftMlp!, scaleMlp!), gate: gate! };
  }
}

/** DiT's tanh GELU (a name for the model code): ops.gelu's one-pass FastGelu primitive. */
export function geluTanh(x: Tensor): Tensor {
  return ops.gelu(x, 'tanh');
}

class ActProj extends Module {
  readonly proj: Linear;
  constructor(dim: number, inner: number, gated: boolean) {
    super();
    this.proj = new Linear(dim, gated ? 2 * inner : inner);
  }
}
/** nn.Dropout's slot in diffusers' `ff.net` (no parameters; identity in eval mode). */
class Dropout extends Module {}

/** diffusers' FeedForward: net.0 = activation with its projection, net.2 = output Linear. */
export class FeedForward extends Module {
  readonly net: readonly [ActProj, Dropout, Linear];
  constructor(dim: number, readonly activation: FfActivation, inner = 4 * dim) {
    super();
    const gated = activation === 'geglu' || activation === 'swiglu';
    this.net = [new ActProj(dim, inner, gated), new Dropout(), new Linear(inner, dim)];
  }
  forward(p: ParamsOf<FeedForward>, x: Tensor): Tensor {
    // sound: net is the [ActProj, Dropout, Linear] tuple built above; ParamsOf widens tuples.
    const [act, , out] = p.net as unknown as [ParamsOf<ActProj>, unknown, ParamsOf<Linear>];
    const proj = (half?: 0 | 1): Tensor => { // [N, T, inner]
      if (half === undefined) return ops.linear(x, act.proj.weight, act.proj.bias);
      // Gated: the two halves of proj as two products (cheaper than one and a Split).
      const cut = (w: Tensor) => ops.split(w, 2, 0)[half]!;
      return ops.linear(x, cut(act.proj.weight), act.proj.bias && cut(act.proj.bias));
    };
    const y = ((): Tensor => {
      switch (this.activation) {
        case 'gelu': return ops.gelu(proj());
        case 'gelu-approximate': return geluTanh(proj());
        // diffusers' 'geglu-approximate' is ApproximateGELU: x * sigmoid(1.702 x), not gated.
        case 'geglu-approximate': {
          const h = proj();
          return ops.mul(h, ops.sigmoid(ops.mul(h, 1.702)));
        }
        case 'geglu': return ops.mul(proj(0), ops.gelu(proj(1)));
        case 'swiglu': return ops.mul(proj(0), ops.silu(proj(1)));
      }
    })();
    return ops.linear(y, out.weight, out.bias);
  }
}

export class DiTBlock extends AdaLnZeroBlock<FeedForward> {
  constructor(cfg: DiTConfig) {
    const dim = cfg.num_attention_heads * cfg.attention_head_dim;
    super(cfg, new FeedForward(dim, cfg.activation_fn));
  }
  /** x [N, T, D] -> [N, T, D]; T may be any subset of the tokens. */
  forward(p: ParamsOf<DiTBlock>, x: Tensor, c: DiTCond, index: number, kv?: KvSource): Tensor {
    const r = this.pre(p, x, c, index, kv);
    return ops.add(r.x, ops.mul(r.gate, this.ff.forward(p.ff, r.mlpIn)));
  }
}

// ---- the model ----

export class PatchEmbed extends Module {
  readonly proj: Conv2d;
  constructor(inChannels: number, dim: number, readonly patchSize: number) {
    super();
    this.proj = new Conv2d(inChannels, dim, patchSize, { stride: patchSize });
  }
}

/** What DiTBase's methods read from a parameter tree (any DiT variant's tree has it). */
export type DiTBaseParams = {
  pos_embed: ParamsOf<PatchEmbed>;
  transformer_blocks: readonly { norm1: ParamsOf<AdaLayerNormZero> }[];
  proj_out_1: ParamsOf<Linear>;
  proj_out_2: ParamsOf<Linear>;
};

/** Tokens per side [h, w] of an image [N, C, H, W] cut into patches. */
export function gridOf(x: Tensor, p: number): [number, number] {
  const [hh, ww] = [x.shape[2], x.shape[3]];
  if (x.rank !== 4 || typeof hh !== 'number' || typeof ww !== 'number' || hh % p || ww % p) {
    throw new ShapeError('DiT', `x must be [N, C, H, W] with static H, W divisible by ` +
      `patch_size ${p}, got [${x.shape.join(', ')}]`);
  }
  return [hh / p, ww / p];
}

/** The parts of DiT outside its blocks, shared by DiT and DiT-MoE: patch embedding with the
 *  sin-cos table (computed here, not stored in checkpoints), final layer, unpatchify. */
export class DiTBase<B extends AdaLnZeroBlock<Module>> extends Module {
  readonly pos_embed: PatchEmbed;
  readonly transformer_blocks: B[];
  readonly proj_out_1: Linear;
  readonly proj_out_2: Linear;
  readonly innerDim: number;
  readonly outChannels: number;
  /** pos_embed.pos_embed: the sin-cos table [1, T, D] for the configured sample size. */
  readonly posTable: HostArray<'float32'>;
  private readonly tables = new Map<string, HostArray<'float32'>>();

  constructor(readonly config: DiTConfig, blocks: B[]) {
    super();
    const c = config;
    this.innerDim = c.num_attention_heads * c.attention_head_dim;
    this.outChannels = c.out_channels ?? c.in_channels;
    this.pos_embed = new PatchEmbed(c.in_channels, this.innerDim, c.patch_size);
    this.transformer_blocks = blocks;
    this.proj_out_1 = new Linear(this.innerDim, 2 * this.innerDim);
    this.proj_out_2 = new Linear(this.innerDim, c.patch_size * c.patch_size * this.outChannels);
    const g = c.sample_size / c.patch_size;
    this.posTable = sincosPosEmbed2d(this.innerDim, g, g, g);
    this.tables.set(`${g}x${g}`, this.posTable);
  }

  /** The sin-cos table for an h x w token grid (diffusers recomputes it with the configured
   *  base size when the input size differs from sample_size). */
  posEmbedFor(h: number, w: number): HostArray<'float32'> {
    const key = `${h}x${w}`;
    let t = this.tables.get(key);
    if (!t) {
      t = sincosPosEmbed2d(this.innerDim, h, w, this.config.sample_size / this.config.patch_size);
      this.tables.set(key, t);
    }
    return t;
  }

  /** Throws unless every index names a block (e.g. those whose hidden states are asked for). */
  checkBlocks(indices: readonly number[]): void {
    const n = this.transformer_blocks.length;
    const bad = indices.find((i) => !(Number.isInteger(i) && i >= 0 && i < n));
    if (bad !== undefined) throw new RangeError(`DiT: block index ${bad} is not in [0, ${n})`);
  }

  /** The token grid [h, w] of an input [N, C, H, W]: [H / p, W / p]. */
  tokenGrid(x: Tensor): [number, number] {
    return gridOf(x, this.config.patch_size);
  }

  /** x [N, C, H, W] -> tokens [N, T, D] (patch embedding + positions), or only the tokens at
   *  tokenIdx (int64 [T'] shared by the batch, or [N, T']) -> [N, T', D]. */
  embed(p: DiTBaseParams, x: Tensor, tokenIdx?: Tensor): Tensor {
    const [h, w] = gridOf(x, this.config.patch_size);
    const y = this.pos_embed.proj.forward(p.pos_embed.proj, x); // [N, D, h, w]
    const n = x.shape[0]!;
    const flat = ops.reshape(y, [n, this.innerDim, h * w]); // [N, D, T]
    const tokens = ops.transpose(flat, [0, 2, 1]); // [N, T, D]
    const all = ops.add(tokens, ops.constant(this.posEmbedFor(h, w))); // [N, T, D]
    return tokenIdx ? gatherTokens(all, tokenIdx) : all;
  }

  /** Final adaLN layer with block 0's conditioning (as diffusers): [N, T', D] ->
   *  per-token patch values [N, T', p * p * outC]. */
  finalLayer(p: DiTBaseParams, h: Tensor, c: DiTCond): Tensor {
    const blk0 = this.transformer_blocks[0]!;
    const emb = blk0.norm1.emb.forward(p.transformer_blocks[0]!.norm1.emb, c); // [N, D]
    const mods = this.proj_out_1.forward(p.proj_out_1, ops.silu(emb)); // [N, 2D]
    const [shift, scale] = ops.split(mods, 2, 1).map((m) => ops.unsqueeze(m, 1));
    const y = modulate(ops.layerNorm(h, { eps: 1e-6 }), shift!, scale!);
    return this.proj_out_2.forward(p.proj_out_2, y);
  }

  /** Patch values [N, h * w, p * p * C] -> image [N, C, h * p, w * p]. */
  unpatchify(y: Tensor, h: number, w: number): Tensor {
    const [ps, c] = [this.config.patch_size, this.outChannels];
    const n = y.shape[0]!;
    const grid = ops.reshape(y, [n, h, w, ps, ps, c]);
    return ops.reshape(ops.transpose(grid, [0, 5, 1, 3, 2, 4]), [n, c, h * ps, w * ps]);
  }

  /** The inverse of unpatchify: [N, C, H, W] -> [N, T, p * p * C] (e.g. to merge cached and
   *  fresh tokens before unpatchify). */
  patchify(x: Tensor): Tensor {
    const ps = this.config.patch_size;
    const [h, w] = gridOf(x, ps);
    const n = x.shape[0]!;
    const c = x.shape[1]!;
    const grid = ops.reshape(x, [n, c, h, ps, w, ps]);
    return ops.reshape(ops.transpose(grid, [0, 2, 4, 3, 5, 1]), [n, h * w, -1]);
  }
}

/** Rows of x [N, T, D] at int64 indices [T'] (shared) or [N, T'] (per sample) -> [N, T', D]. */
export function gatherTokens(x: Tensor, idx: Tensor): Tensor {
  if (idx.rank === 1) return ops.gather(x, idx, 1);
  const [n, t, d] = x.shape as [number, number, number];
  if (idx.rank !== 2 || idx.shape[0] !== n) {
    throw new ShapeError('gatherTokens', `token indices must be [T'] or [${n}, T'], got ` +
      `[${idx.shape.join(', ')}]`);
  }
  const rows = ops.reshape(ops.arange(n, idx.dtype), [n, 1]);
  const offsets = ops.mul(rows, ops.scalarLike(t, idx.dtype)); // [N, 1]
  return ops.gather(ops.reshape(x, [n * t, d]), ops.add(idx, offsets), 0); // [N, T', D]
}
