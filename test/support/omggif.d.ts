/**
 * @file The part of `omggif` (1.0.10, untyped; a dev dependency) that the GIF tests use to
 * decode what io/video.ts writes.
 */
declare module 'omggif' {
  interface GifFrameInfo {
    width: number;
    height: number;
    /** Centiseconds. */
    delay: number;
  }

  export class GifReader {
    constructor(bytes: Uint8Array);
    readonly width: number;
    readonly height: number;
    numFrames(): number;
    /** The Netscape loop count (0 = forever), or null when the file plays once. */
    loopCount(): number | null;
    frameInfo(frame: number): GifFrameInfo;
    /** Decodes frame `frame` onto `pixels` (width * height * 4 RGBA bytes). */
    decodeAndBlitFrameRGBA(frame: number, pixels: Uint8Array): void;
  }
}
