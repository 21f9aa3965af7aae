// A tour of the engine: write a function over symbolic tensors, trace it, take its
// gradient, compile it to an ONNX Runtime session, train with it, and export it.
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { compile, exportOnnx, grad, HostArray, ops, printGraph, trace, type Tensor } from 'diffuse';

// 1. A model is a plain function of tensors: here a line y = w x + b, with params as a tree.
type Params = { w: Tensor; b: Tensor };
const predict = (p: Params, x: Tensor) => ops.add(ops.mul(x, p.w), p.b); // [N]
const loss = (p: Params, x: Tensor, y: Tensor) => ops.mean(ops.square(ops.sub(predict(p, x), y)));

export async function tour(): Promise<{ w: number; b: number; graph: string; onnxPath: string }> {
  // 2. Tracing runs the function on symbolic inputs and records a graph.
  const graph = printGraph(trace((x: Tensor) => ops.mul(ops.add(x, 1), x), [{ shape: [3] }]));

  // 3. grad(loss) is another traced function; one SGD step is a third. compile() turns it
  //    into an async function on host arrays, with one ORT session per input shape.
  const sgdStep = compile((p: Params, x: Tensor, y: Tensor) => {
    const g = grad(loss)(p, x, y) as Params;
    return { w: ops.sub(p.w, ops.mul(g.w, 0.1)), b: ops.sub(p.b, ops.mul(g.b, 0.1)) };
  });

  // 4. Train on y = 3x - 1.
  const x = HostArray.fromNested([-1, -0.5, 0, 0.5, 1, 1.5]);
  const y = HostArray.fromNested([-4, -2.5, -1, 0.5, 2, 3.5]);
  let p: { w: HostArray; b: HostArray } = { w: HostArray.fromNested([0]), b: HostArray.fromNested([0]) };
  for (let i = 0; i < 200; i++) p = await sgdStep(p, x, y);
  await sgdStep.dispose();

  // 5. Export the trained predictor, weights baked in, with a dynamic batch dimension.
  const trained = { w: ops.constant(p.w), b: ops.constant(p.b) };
  const onnxPath = join(tmpdir(), `diffuse-tour-${process.pid}.onnx`);
  await exportOnnx((xs: Tensor) => predict(trained, xs), [{ shape: ['batch'] }], onnxPath);
  return { w: p.w.get(0), b: p.b.get(0), graph, onnxPath };
}
