// voxd's JavaScript SDK (web-demo/sdk/voxd.js): pure parts, then whole turns against a real
// `voxd serve` (started by tests/clients.rs, which sets VOXD_URL, VOXD_WS_URL, VOXD_API_KEY).
import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";

import {
  StreamingResampler,
  VoxdError,
  base64,
  connect,
  floatToPcm16,
  fromBase64,
  pcm16ToFloat,
} from "../../web-demo/sdk/voxd.js";
import { audio, chunks, env, reference, silence, wer } from "./helpers.mjs";

const sine = (freq, rate, seconds) =>
  Float32Array.from({ length: Math.round(rate * seconds) }, (_, i) => Math.sin((2 * Math.PI * freq * i) / rate));

const rms = (x) => Math.sqrt(x.reduce((a, s) => a + s * s, 0) / x.length);

test("resampling in chunks equals resampling in one piece", () => {
  for (const [from, to] of [
    [48000, 16000],
    [44100, 16000],
  ]) {
    const input = sine(440, from, 0.5);
    const whole = new StreamingResampler(from, to).process(input);
    const r = new StreamingResampler(from, to);
    const parts = [];
    // Irregular chunk sizes, as a microphone or a network delivers them.
    for (let pos = 0, i = 0; pos < input.length; i++) {
      const size = [1, 7, 128, 441, 1000, 333][i % 6];
      parts.push(...r.process(input.subarray(pos, pos + size)));
      pos += size;
    }
    assert.equal(parts.length, whole.length, `${from}->${to}`);
    for (let i = 0; i < whole.length; i++) assert.ok(Math.abs(parts[i] - whole[i]) < 1e-6, `${from}->${to} at ${i}`);
  }
});

test("resampling keeps speech-band tones and removes what would alias", () => {
  for (const [from, to] of [
    [48000, 16000],
    [44100, 16000],
    [8000, 16000],
  ]) {
    const tone = new StreamingResampler(from, to).process(sine(1000, from, 1));
    assert.ok(Math.abs(tone.length - to) <= 64, `${from}->${to}: ${tone.length} samples`);
    // Skip the filter's start-up; a full-scale sine has RMS 0.707.
    const level = rms(tone.subarray(200, tone.length - 200));
    assert.ok(Math.abs(level - Math.SQRT1_2) < 0.02, `${from}->${to}: 1 kHz RMS ${level}`);
    // Count zero crossings: 1 kHz has 2000 a second.
    let crossings = 0;
    for (let i = 201; i < tone.length - 200; i++) if (tone[i - 1] < 0 !== tone[i] < 0) crossings++;
    const expected = (2000 * (tone.length - 401)) / to;
    assert.ok(Math.abs(crossings - expected) <= 4, `${from}->${to}: ${crossings} crossings`);
  }
  // 12 kHz at 48 kHz would fold to 4 kHz at 16 kHz; the low-pass removes it (> 40 dB down).
  const folded = new StreamingResampler(48000, 16000).process(sine(12000, 48000, 1));
  assert.ok(rms(folded.subarray(200)) < 0.01, `aliased RMS ${rms(folded.subarray(200))}`);
});

test("PCM16 conversion clamps and base64 matches Node's", () => {
  assert.deepEqual([...floatToPcm16(Float32Array.from([0, 1, -1, 2, -2, 0.5]))], [0, 32767, -32767, 32767, -32767, 16384]);
  for (let n = 0; n < 8; n++) {
    const bytes = Uint8Array.from({ length: 100 + n }, (_, i) => (i * 37 + n) & 255);
    assert.equal(base64(bytes), Buffer.from(bytes).toString("base64"));
    assert.deepEqual([...fromBase64(base64(bytes))], [...bytes]);
  }
  // Spoken answers' PCM16 comes back as the floats it was made from.
  const pcm = floatToPcm16(Float32Array.from([0, 0.5, -0.25, 1]));
  const back = pcm16ToFloat(base64(new Uint8Array(pcm.buffer)));
  assert.deepEqual([...back].map((x) => Math.round(x * 1000) / 1000), [0, 0.5, -0.25, 1]);
});

test("the server serves this SDK and its type declarations", async () => {
  const js = await fetch(`${env("VOXD_URL")}/sdk/voxd.js`);
  assert.equal(js.status, 200);
  assert.match(js.headers.get("content-type"), /javascript/);
  assert.equal(await js.text(), readFileSync(new URL("../../web-demo/sdk/voxd.js", import.meta.url), "utf8"));
  const dts = await fetch(`${env("VOXD_URL")}/sdk/voxd.d.ts`);
  assert.equal(dts.status, 200);
  assert.match(await dts.text(), /export function connect/);
});

test("a wrong API key is refused with a typed error", async () => {
  await assert.rejects(connect(env("VOXD_WS_URL"), { apiKey: "wrong", timeoutMs: 10000 }), (e) => {
    assert.ok(e instanceof VoxdError);
    assert.equal(e.code, "connect_failed");
    return true;
  });
});

/** Streams `samples` at `rate` in 20 ms chunks (as fast as the socket takes them), then silence. */
function stream(session, samples, rate) {
  for (const c of chunks(samples, rate)) session.sendAudio(c, rate);
  for (const c of chunks(silence(1.2, rate), rate)) session.sendAudio(c, rate);
}

test("a spoken turn at 44.1 kHz: events in order, transcript, spoken grounded answer", { timeout: 180000 }, async () => {
  const session = await connect(env("VOXD_WS_URL"), {
    apiKey: env("VOXD_API_KEY"),
    session: { voxd: { citations_event: true } },
  });
  assert.equal(session.state, "open");
  assert.equal(session.session.voxd.input_format.rate, 16000);
  const seen = [];
  const collector = (async () => {
    for await (const e of session) {
      seen.push(e);
      if (e.type === "response.done" || e.type === "voxd.closed") break;
    }
  })();
  // LDC93S1 is stereo 44.1 kHz: the SDK downmixes nothing (helpers did) but resamples to 16 kHz.
  const { samples, rate } = audio("LDC93S1_pcms16le_2_44100.wav");
  assert.equal(rate, 44100);
  stream(session, samples, rate);
  await collector;
  const types = seen.map((e) => e.type);
  const at = (t) => types.indexOf(t);
  for (const t of [
    "input_audio_buffer.speech_started",
    "input_audio_buffer.speech_stopped",
    "conversation.item.input_audio_transcription.completed",
    "response.created",
    "response.output_audio_transcript.delta",
    "response.output_audio.delta",
    "response.done",
  ]) {
    assert.ok(at(t) >= 0, `no ${t} in ${types.join(", ")}`);
  }
  assert.ok(at("input_audio_buffer.speech_started") < at("input_audio_buffer.speech_stopped"));
  assert.ok(at("input_audio_buffer.speech_stopped") < at("conversation.item.input_audio_transcription.completed"));
  // The server speaks by default: the transcript of each piece comes just before its audio.
  assert.ok(at("response.created") < at("response.output_audio_transcript.delta"));
  assert.ok(at("response.output_audio_transcript.delta") < at("response.output_audio.delta"));
  assert.ok(at("response.output_audio.delta") < at("response.done"));
  assert.equal(at("response.output_text.delta"), -1);
  const completed = seen.find((e) => e.type === "conversation.item.input_audio_transcription.completed");
  const score = wer(reference("LDC93S1_pcms16le_2_44100.wav"), completed.transcript);
  assert.ok(score <= 0.2, `WER ${score}: ${completed.transcript}`);
  assert.ok(completed.voxd_timing.asr_ms >= 0);
  const done = seen.find((e) => e.type === "response.done");
  assert.equal(done.response.status, "completed");
  const text = seen.filter((e) => e.type === "response.output_audio_transcript.delta").map((e) => e.delta).join("");
  assert.ok(text.trim().length > 0);
  assert.equal(done.response.output[0].content[0].transcript, text);
  assert.ok(done.response.voxd_timing.total_ms > 0);
  // The audio decodes to as many samples (24 kHz) as the server says it sent.
  const samplesOut = seen
    .filter((e) => e.type === "response.output_audio.delta")
    .reduce((n, e) => n + pcm16ToFloat(e.delta).length, 0);
  assert.ok(Math.abs(samplesOut / 24 - done.response.voxd_timing.audio_ms) < 5, `${samplesOut} samples`);
  assert.equal(session.activeResponseId, null);
  session.close();
});

test("text-only answers with citations, base64 audio mode, and cancel", { timeout: 180000 }, async () => {
  const session = await connect(env("VOXD_WS_URL"), {
    apiKey: env("VOXD_API_KEY"),
    binary: false,
    session: { output_modalities: ["text"], voxd: { citations_event: true } },
  });
  const citations = session.waitFor("voxd.response.citations", { timeoutMs: 120000 });
  const done = session.waitFor("response.done", { timeoutMs: 120000 });
  session.sendText("How long is the warranty on a Brightwater bike frame?");
  const cited = await citations;
  assert.ok(cited.citations.length > 0);
  assert.ok(cited.citations.every((c) => c.title && c.quote));
  assert.ok(
    cited.citations.some((c) => /warrant/i.test(c.title + c.quote)),
    JSON.stringify(cited.citations.map((c) => c.title)),
  );
  const finished = await done;
  assert.equal(finished.response.status, "completed");
  assert.equal(finished.response.voxd.citations.length, cited.citations.length);

  // Cancel as soon as the next answer starts streaming: a request the model answers at length
  // (not a factual question, which the passage's own sentence answers at once).
  const firstDelta = session.waitFor("response.output_text.delta", { timeoutMs: 120000 });
  const cancelled = session.waitFor("response.done", { timeoutMs: 120000 });
  session.sendText("Please write a long story about a bicycle trip along the coast.");
  await firstDelta;
  assert.ok(session.cancelResponse());
  const end = await cancelled;
  assert.equal(end.response.status, "cancelled");

  // Audio as base64 append events (binary: false) at 16 kHz, committed by hand.
  await session.updateSession({ audio: { input: { turn_detection: null } } });
  const { samples, rate } = audio("LDC93S1_pcms16le_1_16000.wav");
  for (const c of chunks(samples, rate)) session.sendAudio(c, rate);
  const transcript = session.waitFor("conversation.item.input_audio_transcription.completed", {
    timeoutMs: 60000,
  });
  session.commit();
  const t = await transcript;
  assert.ok(wer(reference("LDC93S1_pcms16le_1_16000.wav"), t.transcript) <= 0.2, t.transcript);
  session.close();
});

test("bad input gets a typed error and the session goes on", { timeout: 60000 }, async () => {
  const session = await connect(env("VOXD_WS_URL"), { apiKey: env("VOXD_API_KEY") });
  await assert.rejects(
    session.updateSession({ audio: { input: { format: { type: "audio/pcm", rate: 96000 } } } }),
    (e) => e instanceof VoxdError && e.code === "unsupported_sample_rate",
  );
  assert.equal(session.inputRate, 16000);
  const error = session.waitFor("error");
  session.send({ type: "no.such.event" });
  assert.equal((await error).error.code, "unknown_event_type");
  assert.throws(() => session.sendAudio([1, 2, 3]), TypeError);
  const updated = await session.updateSession({ instructions: "Answer briefly." });
  assert.equal(updated.instructions, "Answer briefly.");
  assert.equal(session.state, "open");
  session.close();
  await session.waitFor("voxd.closed");
  assert.equal(session.state, "closed");
});
