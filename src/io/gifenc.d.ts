/**
 * @file The part of `gifenc` (1.0.3, untyped) that io/video.ts uses. The package is CommonJS
 * whose named exports Node's ESM loader cannot see, so it is declared as what an ESM `import`
 * really gets: one default object.
 */
declare module 'gifenc' {
  /** Colours as [r, g, b] bytes, at most 256. */
  type Palette = number[][];

  interface FrameOptions {
    /** The palette: on the first frame it becomes the global colour table. */
    palette?: Palette;
    /** Milliseconds; written rounded to whole centiseconds. */
    delay?: number;
    /** -1 plays once, 0 loops forever, n > 0 repeats n times (first frame only). */
    repeat?: number;
  }

  interface Encoder {
    /** `index` holds one palette index per pixel, row-major. */
    writeFrame(index: Uint8Array, width: number, height: number, opts?: FrameOptions): void;
    /** Writes the trailer; call once after the last frame. */
    finish(): void;
    /** The encoded file so far (a copy). */
    bytes(): Uint8Array;
  }

  interface Gifenc {
    GIFEncoder(opts?: { initialCapacity?: number }): Encoder;
    /** A palette of at most `maxColors` for RGBA bytes (whose buffer is read whole). */
    quantize(rgba: Uint8Array, maxColors: number): Palette;
    /** The nearest palette index of each RGBA pixel (whose buffer is read whole). */
    applyPalette(rgba: Uint8Array, palette: Palette): Uint8Array;
  }

  const gifenc: Gifenc;
  export default gifenc;
}
