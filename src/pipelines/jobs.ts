/**
 * @file The job handler module every Diffuse worker loads (distributed/: an embedded worker
 * thread, or `diffuse worker --queue` anywhere): one entry point, dispatching on the job's kind.
 */
import { fileURLToPath } from 'node:url';
import type { JobHandler } from '../distributed/jobs.js';
import { DDM_EXPERT_JOB, DDM_ROUTER_JOB, runDdmJob } from './ddm.js';

export const JOB_KINDS: readonly string[] = [DDM_EXPERT_JOB, DDM_ROUTER_JOB];

export const runJob: JobHandler = async (job, ctx) => {
  if (job.kind === DDM_EXPERT_JOB || job.kind === DDM_ROUTER_JOB) return runDdmJob(job, ctx);
  throw new Error(`job ${job.id}: unknown kind '${job.kind}' (this worker runs ${JOB_KINDS.join(', ')})`);
};

/** This module's path, for a back-end to load in its worker threads. */
export const JOB_HANDLER_MODULE: string = fileURLToPath(import.meta.url);
