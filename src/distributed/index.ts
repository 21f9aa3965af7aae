/**
 * @file `diffuse/distributed`: the job back-ends (worker threads here, BullMQ on Redis anywhere)
 * and their shared contract: a handler module exporting `runJob`, and `JobBackend.runAll`.
 */
export {
  JobFailedError, validateJobs,
  type JobBackend, type JobContext, type JobEvents, type JobHandler, type JobProgress, type JobSpec,
} from './jobs.js';
export { JobRunError, runInThread, type ThreadRunOptions } from './thread-runner.js';
export { embeddedBackend, type EmbeddedOptions } from './embedded.js';
export {
  parseRedisUrl, queueJobId, redisBackend, startRedisWorker,
  type RedisAddress, type RedisBackendOptions, type RedisWorker, type RedisWorkerOptions,
  type WorkerEvent,
} from './redis.js';
export {
  CollectiveError, localCollective, localCollectives, transferablePorts, type Collective,
  type LocalLinks,
} from './collective.js';
export { redisCollective, type RedisCollectiveOptions } from './redis-collective.js';
export { connectRedis } from './redis.js';
