/**
 * @file A folder of PNG images as a dataset: every image must have the same size; images in
 * sub-folders are labelled by the sub-folder's name (sorted), images at the top level are
 * unlabelled. Values are scaled to [-1, 1].
 *
 * Channels are decided explicitly, never by whichever file happens to differ:
 * - an alpha channel that is fully opaque is dropped; a pixel with alpha < 255 is an error
 *   naming the file (its colour would depend on the background it is shown on);
 * - an image is grey when every pixel has r = g = b (whatever its PNG colour type), else
 *   colour. A folder of grey images gives 1 channel, of colour images 3; a folder mixing the
 *   two is an error naming one file of each, unless `channels` asks for a number (then grey
 *   images are repeated over 3 channels, or colour ones averaged to 1).
 * - every sub-folder is a class: one with no .png images is an error naming it.
 */
import { readdir, stat } from 'node:fs/promises';
import { join, relative } from 'node:path';
import { HostArray } from '../engine/host.js';
import { readPng, type Image } from '../io/png.js';
import type { ImageDataset } from './dataset.js';

export class DatasetError extends Error {
  override name = 'DatasetError';
}

const isPng = (name: string) => name.toLowerCase().endsWith('.png');

/** Sub-folders (symlinks followed) and the other entries of `dir`, each sorted by name. */
async function listFolder(dir: string): Promise<{ folders: string[]; files: string[] }> {
  const folders: string[] = [];
  const files: string[] = [];
  for (const name of (await readdir(dir)).sort()) {
    const s = await stat(join(dir, name)).catch(() => undefined); // a broken link is a file
    (s?.isDirectory() ? folders : files).push(name);
  }
  return { folders, files };
}

/** The first pixel of `img` with alpha < 255, as 'x, y', or undefined when it is opaque. */
function firstTransparent(img: Image): string | undefined {
  for (let p = 0; p < img.width * img.height; p++) {
    if (img.data[4 * p + 3]! < 255) return `${p % img.width}, ${Math.floor(p / img.width)}`;
  }
  return undefined;
}

function isGrey(img: Image): boolean {
  for (let j = 0; j < img.data.length; j += 4) {
    if (img.data[j] !== img.data[j + 1] || img.data[j] !== img.data[j + 2]) return false;
  }
  return true;
}

export async function loadImageFolder(dir: string, opts: { channels?: 1 | 3 } = {}): Promise<ImageDataset> {
  let top: { folders: string[]; files: string[] };
  try {
    top = await listFolder(dir);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOTDIR') {
      throw new DatasetError(`image folder '${dir}' is not a folder: expected a folder of .png ` +
        'images or of class sub-folders');
    }
    throw new DatasetError(`image folder '${dir}' does not exist or is not readable`);
  }
  const classDirs = top.folders;
  const files: { path: string; label: number }[] = top.files.filter(isPng)
    .map((f) => ({ path: join(dir, f), label: -1 }));
  for (const [k, c] of classDirs.entries()) {
    const inClass = (await listFolder(join(dir, c))).files;
    const pngs = inClass.filter(isPng);
    if (pngs.length === 0) {
      // A class with no images would still be a label the model is sized for.
      const n = inClass.length;
      const others = n > 0 ? ` (it has ${n} other file${n === 1 ? '' : 's'}, e.g. ` +
        `${inClass[0]}; only .png is read)` : '';
      throw new DatasetError(`class folder '${join(dir, c)}' has no .png images${others}: every ` +
        'sub-folder of an image folder is a class; add images or remove the folder');
    }
    for (const f of pngs) files.push({ path: join(dir, c, f), label: k });
  }
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
  for (const f of files) {
    const img = await readPng(f.path);
    const at = firstTransparent(img);
    if (at !== undefined) {
      throw new DatasetError(`${f.path} has transparent pixels (alpha < 255, first at ${at}); ` +
        'flatten it onto a background first');
    }
    images.push(img);
  }
  const { width, height } = images[0]!;
  images.forEach((img, i) => {
    if (img.width !== width || img.height !== height) {
      throw new DatasetError(`${files[i]!.path} is ${img.width}x${img.height}, the first image is ${width}x${height}: ` +
        'every image must have the same size');
    }
  });
  const grey = images.map(isGrey);
  const firstGrey = grey.indexOf(true);
  const firstColour = grey.indexOf(false);
  if (opts.channels === undefined && firstGrey >= 0 && firstColour >= 0) {
    throw new DatasetError(`image folder '${dir}' mixes grey and colour images (grey: ` +
      `${files[firstGrey]!.path}, colour: ${files[firstColour]!.path}): convert them to one kind, ` +
      'or load with channels 1 or 3');
  }
  const c = opts.channels ?? (firstColour < 0 ? 1 : 3);
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
    files: files.map((f) => relative(dir, f.path)),
  };
}
