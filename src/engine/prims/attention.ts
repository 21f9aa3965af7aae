/**
 * @file Attention as one primitive, softmax(scale q k^T) v, run in chunks of the batch so that
 * each chunk's [c, H, Tq, Tk] scores stay in the CPU's last-level cache, and differentiated the
 * way FlashAttention (Dao et al. 2022) does: the backward recomputes each chunk's
 * probabilities from q and k instead of reading saved ones. The composite's autodiff kept the
 * [B, H, Tq, Tk] probabilities of every layer until the backward and streamed each of those
 * tensors through main memory several times; here nothing of that size is saved or leaves the
 * cache, at the price of one more q k^T product and softmax per chunk.
 */
import * as ops from '../ops.js';
import { fmtShape, ShapeError, type Dim } from '../shape.js';
import type { Tensor } from '../tensor.js';
import type { AttentionLayout, PrimDef } from './types.js';

/** Bytes of one chunk's scores the chunking aims for: a few such tensors (scores,
 *  probabilities and their gradients) fit together in a 32 MB L3. Measured on the U-Net's
 *  16 x 16 attention block at batch 64 (2 MB of scores per image): 4 MB and 2 MB ran alike,
 *  8 MB 0.94x (training) and 0.89x (forward), 16 MB 0.82x. */
const CHUNK_SCORE_BYTES = 4 << 20;

/** Images per chunk for q and k in `layout`: the largest divisor of the batch whose
 *  [c, H, Tq, Tk] scores fit the target (the batch itself, one chunk, when it is dynamic or
 *  fits whole). */
function attentionChunk(q: Tensor, k: Tensor, layout: AttentionLayout): Dim {
  const b = q.shape[0]!;
  if (typeof b !== 'number') return b;
  const tAx = layout === 'tokens' ? 2 : 3;
  const per = (q.shape[1] as number) * (q.shape[tAx] as number) * (k.shape[tAx] as number) * 4;
  let c = Math.max(1, Math.min(b, Math.floor(CHUNK_SCORE_BYTES / per)));
  while (b % c !== 0) c--;
  return c;
}

const swapLast = (t: Tensor): Tensor => ops.transpose(t, [0, 1, 3, 2]);

/** The pieces of t along axis 0, `chunk` rows each (t itself when there is one). */
function chunksOf(t: Tensor, chunk: Dim): Tensor[] {
  const b = t.shape[0]!;
  if (typeof b !== 'number' || chunk === b) return [t];
  return ops.split(t, b / (chunk as number), 0);
}

/** One chunk's probabilities softmax(q k^T), [c, H, Tq, Tk], q already scaled, either layout. */
function probabilities(q: Tensor, k: Tensor, layout: AttentionLayout): Tensor {
  return ops.softmax(layout === 'tokens' ? ops.matmul(q, swapLast(k)) : ops.matmul(swapLast(q), k), -1);
}

export const attentionPrim: PrimDef<'attention'> = {
  arity: 3,
  infer: ([q, k, v], p) => {
    const op = 'attention';
    const tokens = p.layout === 'tokens';
    const [tAx, dAx] = tokens ? [2, 3] : [3, 2];
    const ok = q!.shape.length === 4 && k!.shape.length === 4 && v!.shape.length === 4 &&
      [0, 1].every((i) => q!.shape[i] === k!.shape[i] && k!.shape[i] === v!.shape[i]) &&
      q!.shape[dAx] === k!.shape[dAx] && k!.shape[tAx] === v!.shape[tAx] &&
      [q!, k!, v!].every((t) => typeof t.shape[2] === 'number' && typeof t.shape[3] === 'number');
    if (!ok) {
      const form = tokens ? '[B, H, T, D]' : '[B, H, D, T]';
      throw new ShapeError(op, `q, k and v must be ${form} with equal B and H, q and k the same D ` +
        `and k and v the same T, static T and D; got ${fmtShape(q!.shape)}, ${fmtShape(k!.shape)}, ` +
        `${fmtShape(v!.shape)}`);
    }
    if (q!.dtype !== k!.dtype || k!.dtype !== v!.dtype) {
      throw new TypeError(`${op}: dtypes ${q!.dtype}, ${k!.dtype} and ${v!.dtype} differ`);
    }
    const shape = tokens ? [q!.shape[0]!, q!.shape[1]!, q!.shape[2]!, v!.shape[3]!]
      : [q!.shape[0]!, q!.shape[1]!, v!.shape[2]!, q!.shape[3]!];
    return [{ shape, dtype: q!.dtype }];
  },
  // Per chunk: scores, softmax and the product with v, then one Concat along the batch; one
  // chunk outside ORT's CPU provider (GPUs, exported files).
  lower: (cx, ins, outs, p, node) => {
    const [q, k] = node.inputs as [Tensor, Tensor];
    const tokens = p.layout === 'tokens';
    const b = q.shape[0]!;
    const chunk = cx.cpuCacheChunks ? attentionChunk(q, k, p.layout) : b;
    const n = typeof b === 'number' ? b / (chunk as number) : 1;
    const pieces = ins.map((name) => {
      if (n === 1) return [name];
      const parts = Array.from({ length: n }, () => cx.fresh('attn_chunk'));
      cx.emit('Split', [name, cx.int64s(new Array<number>(n).fill(chunk as number))], parts, { axis: 0 });
      return parts;
    });
    const outParts = n === 1 ? [outs[0]!] : Array.from({ length: n }, () => cx.fresh('attn_out'));
    for (let i = 0; i < n; i++) {
      const [qi, ki, vi] = pieces.map((ps) => ps[i]!) as [string, string, string];
      const [qsc, t, s, pr, vT] = ['attn_q', 'attn_t', 'attn_s', 'attn_p', 'attn_t'].map((x) => cx.fresh(x)) as
        [string, string, string, string, string];
      // The scale goes on q, the small operand. tokens: s = q k^T, o = p v. channels: s = q^T k,
      // o^T = v p^T.
      if (p.scale !== 1) cx.emit('Mul', [qi, cx.scalar(p.scale, q.dtype)], [qsc]);
      const qa = p.scale !== 1 ? qsc : qi;
      if (tokens) {
        cx.emit('Transpose', [ki], [t], { perm: [0, 1, 3, 2] });
        cx.emit('MatMul', [qa, t], [s]);
      } else {
        cx.emit('Transpose', [qa], [t], { perm: [0, 1, 3, 2] });
        cx.emit('MatMul', [t, ki], [s]);
      }
      cx.emit('Softmax', [s], [pr], { axis: -1 });
      if (tokens) {
        cx.emit('MatMul', [pr, vi], [outParts[i]!]);
      } else {
        cx.emit('Transpose', [pr], [vT], { perm: [0, 1, 3, 2] });
        cx.emit('MatMul', [vi, vT], [outParts[i]!]);
      }
    }
    if (n > 1) cx.emit('Concat', outParts, outs, { axis: 0 });
  },
  // With P recomputed per chunk from the scaled q, dP = dO v^T, rows = sum_d dO o (flash
  // attention's identity for sum_k dP P), dS = P (dP - rows): dq = scale dS k, dk = dS^T (scale q),
  // dv = P^T dO.
  vjp: ([g], n, needs) => {
    const [q, k, v] = n.inputs as [Tensor, Tensor, Tensor];
    const o = n.outputs[0]!;
    const { scale, layout } = n.params;
    const tokens = layout === 'tokens';
    const chunk = attentionChunk(q, k, layout);
    const dAx = tokens ? 3 : 2;
    const rows = ops.sum(ops.mul(g!, o), [dAx], true); // [B, H, Tq, 1] or [B, H, 1, Tq]
    const [qs, ks, vs, gs, rs] = [q, k, v, g!, rows].map((t) => chunksOf(t, chunk));
    const dq: Tensor[] = [], dk: Tensor[] = [], dv: Tensor[] = [];
    qs.forEach((q0, i) => {
      const [ki, vi, gi] = [ks[i]!, vs[i]!, gs[i]!];
      const qi = scale === 1 ? q0 : ops.mul(q0, scale);
      const pr = probabilities(qi, ki, layout);
      const r = tokens ? rs[i]! : swapLast(rs[i]!); // [c, H, Tq, 1]
      const dp = tokens ? ops.matmul(gi, swapLast(vi)) : ops.matmul(swapLast(gi), vi); // [c, H, Tq, Tk]
      const ds = ops.mul(pr, ops.sub(dp, r));
      if (needs[0]) {
        const dqi = tokens ? ops.matmul(ds, ki) : ops.matmul(ki, swapLast(ds));
        dq.push(scale === 1 ? dqi : ops.mul(dqi, scale));
      }
      if (needs[1]) dk.push(tokens ? ops.matmul(swapLast(ds), qi) : ops.matmul(qi, ds));
      if (needs[2]) dv.push(tokens ? ops.matmul(swapLast(pr), gi) : ops.matmul(gi, pr));
    });
    const join = (ts: Tensor[]) => (ts.length === 1 ? ts[0]! : ops.concat(ts, 0));
    return [needs[0] ? join(dq) : null, needs[1] ? join(dk) : null, needs[2] ? join(dv) : null];
  },
};
