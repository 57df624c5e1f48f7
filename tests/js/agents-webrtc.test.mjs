// The official OpenAI Agents SDK for the browser (`@openai/agents-realtime`, pinned in
// package.json) in headless Chromium, with its own WebRTC transport (`OpenAIRealtimeWebRTC`)
// pointed at voxd, exactly as an app would use it against OpenAI: a backend mints a client secret
// with the server's key, the page (on another origin) holds only that `ek_` secret, its fake
// microphone says a question, the spoken answer arrives over the peer connection, and
// `session.interrupt()` (barge-in) stops it.
import { test, after, before } from "node:test";
import assert from "node:assert/strict";
import { readFileSync, writeFileSync } from "node:fs";
import { createServer } from "node:http";
import { join } from "node:path";

import { env, wer, launchChromium } from "./helpers.mjs";

// The app's own origin: served by the test on another port of loopback, not by voxd, so every call to voxd is
// cross-origin, as it is for a real app (voxd lists this origin in --allowed-origins).
const APP = env("VOXD_APP_ORIGIN");
const BUNDLE = join("node_modules", "@openai", "agents-realtime", "dist", "bundle");

let browser;
let app;
let page;
const pageErrors = [];

/** A client secret for the page, minted by "the app's backend" with the server's key. */
async function clientSecret() {
  const r = await fetch(`${env("VOXD_URL")}/v1/realtime/client_secrets`, {
    method: "POST",
    headers: { authorization: `Bearer ${env("VOXD_API_KEY")}`, "content-type": "application/json" },
    body: JSON.stringify({
      expires_after: { anchor: "created_at", seconds: 600 },
      session: {
        type: "realtime",
        instructions: "You answer questions about the museum from its knowledge base.",
        audio: { input: { turn_detection: { type: "server_vad", silence_duration_ms: 500 } } },
      },
    }),
  });
  assert.equal(r.status, 200, await r.clone().text());
  const body = await r.json();
  assert.match(body.value, /^ek_/);
  return body.value;
}

before(async () => {
  browser = await launchChromium(env("VOXD_FAKE_AUDIO"));
  page = await (await browser.newContext()).newPage();
  page.on("pageerror", (err) => { pageErrors.push(err.message); console.log(`pageerror: ${err.message.replace(/\s+/g, " ")} ${err.stack?.slice(0, 300)}`); });
  page.on("console", (m) => console.log(`page: ${m.text()}`));
  page.on("requestfailed", (r) => console.log(`failed: ${r.method()} ${r.url()} ${r.failure()?.errorText}`));
  app = createServer((req, res) => {
    const path = new URL(req.url, APP).pathname;
    if (path === "/") {
      res.writeHead(200, { "content-type": "text/html" });
      return res.end("<!doctype html><title>app</title><audio id=out></audio>");
    }
    const file = path.replace(/^\/agents\//, "");
    if (!/^[\w.-]+\.mjs$/.test(file)) {
      res.writeHead(404);
      return res.end();
    }
    res.writeHead(200, { "content-type": "text/javascript" });
    res.end(readFileSync(join(BUNDLE, file)));
  });
  await new Promise((ok) => app.listen(Number(new URL(APP).port), "127.0.0.1", ok));
});

after(async () => {
  await browser?.close();
  app?.close();
});

test("the Agents SDK's WebRTC transport talks to voxd from a browser", { timeout: 240000 }, async () => {
  const secret = await clientSecret();
  await page.goto(`${APP}/`);
  const state = await page.evaluate(
    async ({ secret, calls }) => {
      const { RealtimeAgent, RealtimeSession, OpenAIRealtimeWebRTC } = await import("/agents/openai-realtime-agents.mjs");
      const agent = new RealtimeAgent({ name: "Museum guide", instructions: "Answer from the knowledge base." });
      const transport = new OpenAIRealtimeWebRTC({ baseUrl: calls, audioElement: document.getElementById("out") });
      const session = new RealtimeSession(agent, { transport });
      const events = [];
      session.on("transport_event", (e) => events.push(e));
      window.agents = { session, transport, events };
      await session.connect({ apiKey: secret });
      // A tap on the remote stream (the SDK's audio element plays it): decoded samples with the
      // time they came, so the test can hear the answer and see when it stops.
      const ctx = new AudioContext();
      const tap = ctx.createScriptProcessor(4096, 1, 1);
      ctx.createMediaStreamSource(document.getElementById("out").srcObject).connect(tap);
      tap.connect(ctx.destination);
      window.agents.rate = ctx.sampleRate;
      window.agents.chunks = [];
      tap.onaudioprocess = (e) => {
        const x = e.inputBuffer.getChannelData(0);
        let sum = 0;
        for (const v of x) sum += v * v;
        window.agents.chunks.push({ at: performance.now(), rms: Math.sqrt(sum / x.length), samples: Array.from(x) });
      };
      return { status: transport.status, callId: transport.callId ?? null };
    },
    { secret, calls: `${env("VOXD_URL")}/v1/realtime/calls` },
  );
  assert.equal(state.status, "connected", JSON.stringify(state));

  // The fake microphone's question is transcribed and answered, all through the SDK.
  await page.waitForFunction(() => window.agents.events.some((e) => e.type === "response.done"), null, {
    timeout: 180000,
    polling: 200,
  });
  const heard = await page.evaluate(() =>
    window.agents.events.filter((e) => e.type === "conversation.item.input_audio_transcription.completed").map((e) => e.transcript).join(" "),
  );
  const score = wer(env("VOXD_QUESTION_TEXT"), heard);
  assert.ok(score <= 0.35, `WER ${score.toFixed(2)}: ${heard}`);
  // The SDK's own history holds the answer, spoken (its transcript) and about Sunday's hours.
  await page.waitForFunction(() =>
    window.agents.session.history.some((i) => i.role === "assistant" && i.status === "completed"),
  );
  const answer = await page.evaluate(() =>
    window.agents.session.history
      .filter((i) => i.role === "assistant")
      .flatMap((i) => i.content.map((c) => c.transcript ?? c.text ?? ""))
      .join(" "),
  );
  assert.match(answer, /10/, answer);

  // Its audio came over the peer connection: the decoded samples from the first answer's
  // `output_audio_buffer.started` to its `.stopped`, saved for the Rust side to hear back.
  await page.waitForFunction(() => window.agents.events.some((e) => e.type === "output_audio_buffer.stopped"), null, {
    timeout: 30000,
  });
  await page.waitForTimeout(500);
  const spoken = await page.evaluate(() => {
    const loud = window.agents.chunks.filter((c) => c.rms > 0.01);
    const from = loud[0]?.at ?? 0;
    const to = loud.at(-1)?.at ?? 0;
    const samples = window.agents.chunks.filter((c) => c.at >= from - 200 && c.at <= to + 200).flatMap((c) => c.samples);
    return { rate: window.agents.rate, samples, seconds: samples.length / window.agents.rate };
  });
  assert.ok(spoken.seconds > 1, `${spoken.seconds.toFixed(2)} s of answer audio`);
  writeWav(join(env("VOXD_ARTIFACTS"), "agents-sdk-answer.wav"), spoken.samples, spoken.rate);
  console.log(`answer: ${answer}\nheard: ${heard}\naudio: ${spoken.seconds.toFixed(2)} s`);

  // Barge-in: a second (typed) question, interrupted as soon as its audio starts: voxd clears
  // the outgoing audio at once and says so; no more answer audio arrives.
  await page.evaluate(() => {
    window.agents.session.sendMessage("What time do you open on Sunday, and what does a ticket cost?");
  });
  await page.waitForFunction(
    () => window.agents.events.filter((e) => e.type === "output_audio_buffer.started").length >= 2,
    null,
    { timeout: 120000, polling: 50 },
  );
  await page.evaluate(() => window.agents.session.interrupt());
  await page.waitForFunction(() => window.agents.events.some((e) => e.type === "output_audio_buffer.cleared"), null, {
    timeout: 10000,
  });
  // Chromium's jitter buffer holds ~0.1 s; after that, silence (no chunk above the noise floor).
  const cleared = await page.evaluate(() => performance.now());
  await page.waitForTimeout(2000);
  const after = await page.evaluate(
    (t) => window.agents.chunks.filter((c) => c.at > t + 400 && c.rms > 0.01).length,
    cleared,
  );
  assert.equal(after, 0, "answer audio went on after the interrupt");
  // The answer in the conversation is cut at what was played (no client report needed).
  const kinds = await page.evaluate(() => window.agents.events.map((e) => e.type));
  assert.ok(kinds.includes("conversation.item.truncated"), kinds.join(" "));

  // Hang up through the SDK: the call ends.
  await page.evaluate(() => window.agents.session.close());
  assert.deepEqual(pageErrors, []);
});

/** Writes mono float samples as a 16-bit PCM WAV file. */
function writeWav(path, samples, rate) {
  const b = Buffer.alloc(44 + samples.length * 2);
  b.write("RIFF", 0, "ascii");
  b.writeUInt32LE(36 + samples.length * 2, 4);
  b.write("WAVEfmt ", 8, "ascii");
  b.writeUInt32LE(16, 16);
  b.writeUInt16LE(1, 20);
  b.writeUInt16LE(1, 22);
  b.writeUInt32LE(rate, 24);
  b.writeUInt32LE(rate * 2, 28);
  b.writeUInt16LE(2, 32);
  b.writeUInt16LE(16, 34);
  b.write("data", 36, "ascii");
  b.writeUInt32LE(samples.length * 2, 40);
  samples.forEach((v, i) => b.writeInt16LE(Math.max(-32768, Math.min(32767, Math.round(v * 32767))), 44 + i * 2));
  writeFileSync(path, b);
}
