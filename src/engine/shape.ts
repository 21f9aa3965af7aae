/**
 * @file Static shapes with optional named dynamic dimensions, the shape errors that
 * primitives throw at trace time, and the broadcasting rule they share.
 */

/** A dimension: a fixed size, or the name of a dimension fixed only at run time ('batch'). */
export type Dim = number | string;
export type Shape = readonly Dim[];

/** A shape rule failed while tracing: names the primitive, the requirement and the shapes. */
export class ShapeError extends TypeError {
  constructor(
    readonly op: string,
    message: string,
  ) {
    super(`${op}: ${message}`);
    this.name = 'ShapeError';
  }
}

export function fmtShape(s: Shape): string {
  return `[${s.join(', ')}]`;
}

/** The number of elements; throws for shapes with dynamic dimensions. */
export function staticNumel(s: Shape, op: string): number {
  let n = 1;
  for (const d of s) {
    if (typeof d !== 'number') {
      throw new ShapeError(op, `needs a static shape, got ${fmtShape(s)} (dynamic '${d}')`);
    }
    n *= d;
  }
  return n;
}

/** A dimension that must be a known number for this op's shape arithmetic. */
export function staticDim(d: Dim, op: string, what: string): number {
  if (typeof d !== 'number') {
    throw new ShapeError(op, `${what} must be a static size, got dynamic dimension '${d}'`);
  }
  return d;
}

/** Normalises a possibly negative axis against a rank, or throws naming the op. */
export function normAxis(axis: number, rank: number, op: string): number {
  const a = axis < 0 ? axis + rank : axis;
  if (!Number.isInteger(a) || a < 0 || a >= rank) {
    throw new ShapeError(op, `axis ${axis} is out of range for rank ${rank}`);
  }
  return a;
}

/** numpy broadcasting of any number of shapes (dims equal, or one of them is 1). */
export function broadcastShapes(op: string, ...shapes: Shape[]): Dim[] {
  const rank = Math.max(...shapes.map((s) => s.length));
  const out: Dim[] = [];
  for (let i = 0; i < rank; i++) {
    let d: Dim = 1;
    for (const s of shapes) {
      const e = s[s.length - rank + i] ?? 1;
      if (e === 1) continue;
      if (d === 1) d = e;
      else if (d !== e) {
        throw new ShapeError(
          op,
          `shapes ${shapes.map(fmtShape).join(' and ')} do not broadcast (axis ${i}: ${d} vs ${e})`,
        );
      }
    }
    out.push(d);
  }
  return out;
}

export function sameShape(a: Shape, b: Shape): boolean {
  return a.length === b.length && a.every((d, i) => d === b[i]);
}
