/**
 * @file A folder of PNG images as a dataset: every image must have the same size; images in
 * sub-folders are labelled by the sub-folder's name (sorted), images at the top level are
 * unlabelled. Grey when every pixel has r = g = b, else RGB; values scaled to [-1, 1].
 */
import { readdir, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { HostArray } from '../engine/host.js';
import { readPng, type Image } from '../io/png.js';
import type { ImageDataset } from './dataset.js';

export class DatasetError extends Error {
  override name = 'DatasetError';
}

async function pngsIn(dir: string): Promise<string[]> {
  return (await readdir(dir)).filter((f) => f.toLowerCase().endsWith('.png')).sort().map((f) => join(dir, f));
}

export async function loadImageFolder(dir: string, opts: { channels?: 1 | 3 } = {}): Promise<ImageDataset> {
  let entries: string[];
  try {
    entries = (await readdir(dir)).sort();
  } catch {
    throw new DatasetError(`image folder '${dir}' does not exist or is not readable`);
  }
  const classDirs: string[] = [];
  for (const e of entries) if ((await stat(join(dir, e))).isDirectory()) classDirs.push(e);
  const top = await pngsIn(dir);
  const files: { path: string; label: number }[] = top.map((path) => ({ path, label: -1 }));
  for (const [k, c] of classDirs.entries()) for (const path of await pngsIn(join(dir, c))) files.push({ path, label: k });
  if (files.length === 0) {
    throw new DatasetError(`image folder '${dir}' has no .png images (looked at the top level and in ` +
      `${classDirs.length} sub-folders)`);
  }
  const labelled = files.filter((f) => f.label >= 0).length;
  if (labelled > 0 && labelled < files.length) {
    throw new DatasetError(`image folder '${dir}': ${files.length - labelled} images at the top level and ` +
      `${labelled} in class sub-folders; put every image in a class folder, or none`);
  }
  const images: Image[] = [];
  for (const f of files) images.push(await readPng(f.path));
  const { width, height } = images[0]!;
  images.forEach((img, i) => {
    if (img.width !== width || img.height !== height) {
      throw new DatasetError(`${files[i]!.path} is ${img.width}x${img.height}, the first image is ${width}x${height}: ` +
        'every image must have the same size');
    }
  });
  const grey = images.every((img) => img.data.every((_, j) => j % 4 !== 0 || (img.data[j] === img.data[j + 1] && img.data[j] === img.data[j + 2])));
  const c = opts.channels ?? (grey ? 1 : 3);
  const per = c * height * width;
  const out = new Float32Array(files.length * per);
  images.forEach((img, i) => {
    for (let k = 0; k < c; k++) {
      for (let p = 0; p < height * width; p++) {
        const v = c === 1 ? (img.data[4 * p]! + img.data[4 * p + 1]! + img.data[4 * p + 2]!) / 3 : img.data[4 * p + k]!;
        out[i * per + k * height * width + p] = v / 127.5 - 1;
      }
    }
  });
  return {
    images: new HostArray(out, [files.length, c, height, width]),
    ...(labelled ? { labels: Int32Array.from(files, (f) => f.label), classNames: classDirs } : {}),
  };
}
