// Helpers for the client tests: reading WAV files, reference transcripts, word error rate.
import { readFileSync } from "node:fs";
import { join } from "node:path";

export const env = (name) => {
  const v = process.env[name];
  if (!v) throw new Error(`${name} is not set: run these tests through cargo test --test clients`);
  return v;
};

/** Reads a PCM16 WAV file: mono Float32 samples (channels averaged) and the rate. */
export function readWav(path) {
  const b = readFileSync(path);
  if (b.toString("ascii", 0, 4) !== "RIFF" || b.toString("ascii", 8, 12) !== "WAVE") {
    throw new Error(`${path} is not a WAV file`);
  }
  let at = 12;
  let channels = 1;
  let rate = 0;
  while (at + 8 <= b.length) {
    const id = b.toString("ascii", at, at + 4);
    const len = b.readUInt32LE(at + 4);
    if (id === "fmt ") {
      channels = b.readUInt16LE(at + 10);
      rate = b.readUInt32LE(at + 12);
      if (b.readUInt16LE(at + 22) !== 16) throw new Error("only 16-bit PCM");
    } else if (id === "data") {
      const frames = Math.floor(len / (2 * channels));
      const out = new Float32Array(frames);
      for (let i = 0; i < frames; i++) {
        let sum = 0;
        for (let c = 0; c < channels; c++) sum += b.readInt16LE(at + 8 + (i * channels + c) * 2);
        out[i] = sum / channels / 32768;
      }
      return { samples: out, rate };
    }
    at += 8 + len + (len & 1);
  }
  throw new Error(`${path} has no data chunk`);
}

export function audio(name) {
  return readWav(join(env("VOXD_AUDIO_DIR"), name));
}

export function reference(file) {
  const tsv = readFileSync(join(env("VOXD_AUDIO_DIR"), "transcripts.tsv"), "utf8");
  const row = tsv.split("\n").map((l) => l.split("\t")).find((c) => c[0] === file);
  if (!row) throw new Error(`no reference for ${file}`);
  return row[2];
}

/** Lower case, punctuation to spaces (apostrophes inside words kept), split on whitespace. */
export function normalize(text) {
  return text
    .toLowerCase()
    .replace(/[^\p{L}\p{N}']+/gu, " ")
    .replace(/(^|\s)'+|'+(?=\s|$)/g, " ")
    .split(/\s+/)
    .filter(Boolean);
}

/** Word error rate of `hypothesis` against `reference` (Levenshtein over normalised words). */
export function wer(reference, hypothesis) {
  const r = normalize(reference);
  const h = normalize(hypothesis);
  if (r.length === 0) return h.length === 0 ? 0 : 1;
  let prev = Array.from({ length: h.length + 1 }, (_, j) => j);
  for (let i = 1; i <= r.length; i++) {
    const cur = [i];
    for (let j = 1; j <= h.length; j++) {
      cur[j] = Math.min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (r[i - 1] === h[j - 1] ? 0 : 1));
    }
    prev = cur;
  }
  return prev[h.length] / r.length;
}

/** `seconds` of silence at `rate`. */
export const silence = (seconds, rate) => new Float32Array(Math.round(seconds * rate));

/** Splits samples into chunks of `ms` milliseconds. */
export function* chunks(samples, rate, ms = 20) {
  const n = Math.round((rate * ms) / 1000);
  for (let i = 0; i < samples.length; i += n) yield samples.subarray(i, i + n);
}

/** Debian's Chromium, headless, with a fake microphone playing `fakeAudio` once (WAV). */
export async function launchChromium(fakeAudio) {
  const { chromium } = await import("playwright-core");
  return chromium.launch({
    executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
    args: [
      "--no-sandbox",
      "--disable-gpu",
      "--disable-quic",
      "--no-first-run",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
      "--use-fake-ui-for-media-stream",
      "--use-fake-device-for-media-stream",
      `--use-file-for-fake-audio-capture=${fakeAudio}%noloop`,
      "--autoplay-policy=no-user-gesture-required",
    ],
  });
}
