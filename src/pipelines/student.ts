/**
 * @file What a distilled student was made for. `diffuse distill` writes it into the student's
 * model_index.json as `_diffuse_student` (diffusers skips keys that start with '_', so the
 * folder still loads there); `diffuse sample` and `diffuse eval` read it so that a student
 * runs with the sampler, steps and guidance it was trained for unless told otherwise, and a
 * one-step BOOT student refuses settings it cannot honour.
 */
import { DiffusersFolderError } from '../io/diffusers.js';

export const STUDENT_KEY = '_diffuse_student';

export interface StudentRecord {
  /** 'mmd': the teacher fine-tuned through its own T'-step DDIM chain; 'boot': a one-step
   *  generator distilled from the teacher's DDIM path. */
  method: 'mmd' | 'boot';
  /** The sampler and steps the student was trained for. */
  sampler: string;
  steps: number;
  /** MMD: the guidance inside the tuned chain. BOOT: the teacher's guidance, distilled into
   *  the student's weights (the student itself runs unguided). */
  guidance: number;
  /** The teacher's folder, as given to distill. */
  teacher: string;
}

/** The student record of a model index's private entries, or undefined; a malformed record is
 *  an error naming the file. */
export function readStudentRecord(entries: Record<string, unknown>, path: string):
  StudentRecord | undefined {
  const r = entries[STUDENT_KEY] as Partial<StudentRecord> | undefined;
  if (r === undefined) return undefined;
  const ok = typeof r === 'object' && r !== null && (r.method === 'mmd' || r.method === 'boot') &&
    typeof r.sampler === 'string' && Number.isInteger(r.steps) && r.steps! >= 1 &&
    typeof r.guidance === 'number' && typeof r.teacher === 'string';
  if (!ok) {
    throw new DiffusersFolderError(path, `${STUDENT_KEY} must be {"method": "mmd"|"boot", ` +
      `"sampler": NAME, "steps": N, "guidance": W, "teacher": DIR}, got ${JSON.stringify(r)}`);
  }
  return r as StudentRecord;
}

/** The sampler, steps and guidance of one run. */
export interface SamplingChoice {
  sampler: string;
  steps: number;
  guidance: number;
}

/**
 * The settings a run of `student` uses: what the user gave (`given`, undefined where they did
 * not choose), else what the student was trained for. A BOOT student is a one-step generator
 * with its guidance in its weights: any other sampler, step count or guidance is refused.
 */
export function studentSampling(student: StudentRecord, given: Partial<SamplingChoice>):
  SamplingChoice {
  if (student.method === 'boot') {
    const asked = (['sampler', 'steps', 'guidance'] as const).filter((k) => given[k] !== undefined &&
      given[k] !== { sampler: student.sampler, steps: student.steps, guidance: 1 }[k]);
    if (asked.length) {
      throw new RangeError(`this is a one-step BOOT student (guidance ${student.guidance} ` +
        `distilled from ${student.teacher}): it runs with --sampler ${student.sampler} --steps ` +
        `${student.steps} and no guidance; ${asked.map((k) => `--${k} ${given[k]}`).join(', ')} ` +
        'cannot apply');
    }
    return { sampler: student.sampler, steps: student.steps, guidance: 1 };
  }
  return { sampler: given.sampler ?? student.sampler, steps: given.steps ?? student.steps,
    guidance: given.guidance ?? student.guidance };
}
