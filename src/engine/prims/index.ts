/** @file The primitive table: every primitive's record, checked complete by its type. */
import { attentionPrim } from './attention.js';
import { elementwisePrims } from './elementwise.js';
import { linalgPrims } from './linalg.js';
import { movementPrims } from './movement.js';
import { normPrims } from './norm.js';
import { reducePrims } from './reduce.js';
import type { PrimTable } from './types.js';

export const PRIMS: PrimTable = {
  ...elementwisePrims,
  ...reducePrims,
  ...normPrims,
  ...linalgPrims,
  ...movementPrims,
  attention: attentionPrim,
};

export type { Prim, PrimParams, PrimDef, Aval, LowerCtx } from './types.js';
