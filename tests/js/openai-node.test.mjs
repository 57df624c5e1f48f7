// The official OpenAI Node SDK (npm `openai`) against a real `voxd serve`: only the base URL
// changes. Its realtime WebSocket client (openai/realtime/websocket) builds
// `wss://HOST/v1/realtime?model=…` from `baseURL` and sends the key as a subprotocol. It always
// picks wss:// (right for voxd serving TLS itself, or behind a TLS proxy); for plain ws:// on
// loopback, its `onURL` hook switches the scheme.
import { test } from "node:test";
import assert from "node:assert/strict";

import OpenAI from "openai";
import { OpenAIRealtimeWebSocket } from "openai/realtime/websocket";
import { base64, floatToPcm16 } from "../../web-demo/sdk/voxd.js";
import { audio, chunks, env, reference, silence, wer } from "./helpers.mjs";

test("a spoken turn through OpenAIRealtimeWebSocket", { timeout: 180000 }, async () => {
  const client = new OpenAI({ baseURL: `${env("VOXD_URL")}/v1`, apiKey: env("VOXD_API_KEY") });
  const rt = new OpenAIRealtimeWebSocket(
    {
      model: "gpt-realtime",
      onURL: (url) => {
        if (env("VOXD_URL").startsWith("http:")) url.protocol = "ws:";
      },
    },
    client,
  );
  const events = [];
  const errors = [];
  rt.on("event", (e) => events.push(e));
  rt.on("error", (e) => errors.push(e));
  // JFK pauses mid-sentence, so the clip may be two turns: the first answer is then cancelled
  // when the second turn starts (barge-in), and the last one completes (or is cut by the token
  // limit: `incomplete`, with the reason).
  const finished = new Promise((resolve, reject) => {
    rt.on("response.done", (e) => {
      if (e.response.status === "completed" || e.response.status === "incomplete") resolve(e);
    });
    const timer = setTimeout(() => reject(new Error(`no response.done; saw ${events.map((e) => e.type).join(", ")}`)), 170000);
    timer.unref();
  });
  await new Promise((resolve, reject) => {
    rt.socket.addEventListener("open", resolve);
    rt.socket.addEventListener("error", () => reject(new Error("could not connect")));
  });
  rt.send({
    type: "session.update",
    session: {
      type: "realtime",
      // OpenAI's default, spelled out: voxd answers with its voice.
      output_modalities: ["audio"],
      audio: {
        input: {
          format: { type: "audio/pcm", rate: 16000 },
          // JFK pauses for ~0.5 s mid-sentence: a longer window keeps the clip one turn.
          turn_detection: { type: "server_vad", silence_duration_ms: 1200 },
        },
      },
    },
  });
  const { samples, rate } = audio("jfk.wav");
  assert.equal(rate, 16000);
  for (const part of [samples, silence(2, rate)]) {
    for (const c of chunks(part, rate, 100)) {
      const pcm = floatToPcm16(c);
      rt.send({ type: "input_audio_buffer.append", audio: base64(new Uint8Array(pcm.buffer)) });
    }
  }
  const done = await finished;
  rt.close();
  assert.deepEqual(errors, []);
  const types = events.map((e) => e.type);
  assert.ok(types.includes("session.created"), types.join(", "));
  assert.ok(types.includes("session.updated"), types.join(", "));
  const transcript = events
    .filter((e) => e.type === "conversation.item.input_audio_transcription.completed")
    .map((e) => e.transcript)
    .join(" ");
  const score = wer(reference("jfk.wav"), transcript);
  assert.ok(score <= 0.15, `WER ${score}: ${transcript}`);
  const ofAnswer = (type) => events.filter((e) => e.type === type && e.response_id === done.response.id);
  const words = ofAnswer("response.output_audio_transcript.delta").map((d) => d.delta).join("");
  assert.ok(words.trim().length > 0);
  // The audio: base64 PCM16 at 24 kHz, as much as the server says it sent.
  const bytes = ofAnswer("response.output_audio.delta").reduce((n, d) => n + Buffer.from(d.delta, "base64").length, 0);
  assert.ok(bytes > 24000, `${bytes} bytes of audio`);
  assert.ok(Math.abs(bytes / 48 - done.response.voxd_timing.audio_ms) < 5);
  assert.equal(ofAnswer("response.output_audio.done").length, 1);
  assert.equal(ofAnswer("response.output_text.delta").length, 0);
  if (done.response.status === "incomplete") {
    assert.equal(done.response.status_details.reason, "max_output_tokens");
  }
  assert.equal(done.response.output[0].content[0].type, "output_audio");
  assert.equal(done.response.output[0].content[0].transcript, words);
});
