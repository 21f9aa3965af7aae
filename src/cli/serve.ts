/**
 * @file `diffuse serve`: an HTTP server that samples one model folder on request (server/).
 * It prints the URL it listens on, then serves until SIGINT or SIGTERM: then it takes no new
 * jobs, cancels the queued and running ones (their event streams end with `cancelled`), stops
 * its worker threads and exits 0. A second signal while stopping exits at once (130).
 */
import { existsSync } from 'node:fs';
import type { Command } from 'commander';
import { EXIT } from './errors.js';
import { addOptions, commandOptions, int, path, text } from './options.js';
import { DEFAULT_MODEL_DIR } from './sample.js';

export const SERVE_OPTIONS = {
  model: path({ arg: '<dir>', help: `pipeline or model folder to serve, fixed while the server ` +
    `runs (default: ${DEFAULT_MODEL_DIR})` }),
  port: int({ min: 0, max: 65535, help: 'TCP port (0: any free port)', default: 8080 }),
  host: text({ arg: '<addr>', help: 'address to listen on (0.0.0.0: every interface)',
    default: '127.0.0.1' }),
  workers: int({ min: 1, help: 'worker threads, each sampling one job at a time; the cores ' +
    'are shared between them', default: 1 }),
  queue: int({ min: 1, help: 'most jobs waiting for a worker; beyond it requests get 429 ' +
    'with Retry-After', default: 32 }),
  maxN: int({ min: 1, help: 'most images one request may ask for', default: 64 }),
  maxSteps: int({ min: 1, help: 'most sampler steps one request may ask for', default: 200 }),
  playground: path({ arg: '<dir>', help: 'a folder built by `npm run playground` (the browser ' +
    'page and its exported model), served at /' }),
  token: text({ arg: '<token>', help: 'require Authorization: Bearer <token> on /v1/ ' +
    '(/healthz and /metrics stay open)' }),
};

/** Resolves on the first SIGINT or SIGTERM; a second one ends the process at once. */
function stopSignal(): Promise<NodeJS.Signals> {
  return new Promise((resolve) => {
    const first = (signal: NodeJS.Signals): void => {
      process.off('SIGINT', first);
      process.off('SIGTERM', first);
      const again = (): void => {
        console.error('diffuse serve: stopped without waiting for the workers');
        process.exit(EXIT.interrupted);
      };
      process.once('SIGINT', again);
      process.once('SIGTERM', again);
      resolve(signal);
    };
    process.on('SIGINT', first);
    process.on('SIGTERM', first);
  });
}

export function registerServe(program: Command): void {
  addOptions(program.command('serve')
    .description('serve a diffusers UNet2DModel or DiT folder over HTTP: POST /v1/samples ' +
      'queues a sampling job; GET /v1/jobs/ID, /events (server-sent progress) and /result ' +
      '(PNG) follow it; DELETE cancels it; /healthz and /metrics (Prometheus) for operators'),
  SERVE_OPTIONS)
    .action(async (_: unknown, cmd: Command) => {
      const opts = commandOptions(SERVE_OPTIONS, cmd);
      const o = opts.values;
      if (o.token !== undefined && !/^[\x21-\x7e]+$/.test(o.token)) {
        throw opts.refuse('token', 'printable ASCII without spaces (it travels in an HTTP header)');
      }
      const dir = o.model ?? DEFAULT_MODEL_DIR;
      if (o.model === undefined && !existsSync(dir)) {
        throw new Error(`no model at ${dir}: train one with \`diffuse train\` (its pipeline is ` +
          '<out>/model) or pass --model DIR');
      }
      // Loaded here, not at start-up: fastify adds most of a second to every other command.
      const { createServer } = await import('../server/app.js');
      const server = await createServer({
        model: dir, workers: o.workers, queue: o.queue, maxN: o.maxN, maxSteps: o.maxSteps,
        ...(o.token !== undefined ? { token: o.token } : {}),
        ...(o.playground !== undefined ? { staticDir: o.playground } : {}),
        log: (line) => console.error(`diffuse serve: ${line}`),
      });
      for (const note of server.model.notes) console.error(`note: ${note}`);
      let url: string;
      try {
        url = await server.app.listen({ port: o.port, host: o.host });
      } catch (e) {
        await server.close();
        const code = (e as NodeJS.ErrnoException).code;
        throw new Error(`cannot listen on ${o.host}:${o.port}: ${code === 'EADDRINUSE'
          ? 'the port is in use; pick another with --port' : (e as Error).message}`);
      }
      const stopped = stopSignal();
      const m = server.model;
      console.log(`serving ${m.className} from ${m.modelFolder} (${m.classes ? `${m.classes} ` +
        'classes' : 'unconditional'}) with ${o.workers} worker${o.workers > 1 ? 's' : ''}; ` +
        `at most ${o.queue} queued jobs, n <= ${o.maxN}, steps <= ${o.maxSteps}` +
        `${o.token !== undefined ? '; /v1/ needs the bearer token' : ''}`);
      console.log(`listening on ${url}${o.playground !== undefined ? ` (the playground at ${url}/)` : ''}`);
      const signal = await stopped;
      console.error(`diffuse serve: ${signal}: stopping (no new jobs; cancelling queued and running ones)`);
      await server.close();
      console.log('stopped');
    });
}
