// The web demo over WebRTC in a real browser (Debian's Chromium, headless, its own WebRTC stack):
// a fake microphone says a question (VOXD_FAKE_AUDIO, VOXD_QUESTION_TEXT); the page calls the
// server with the microphone on the call's audio track and the events on `oai-events`; the
// transcript and the answer appear, and the answer's audio arrives on the call's track.
import { test, after, before } from "node:test";
import assert from "node:assert/strict";

import { env, wer, launchChromium } from "./helpers.mjs";

let browser;
let page;
const pageErrors = [];

before(async () => {
  browser = await launchChromium(env("VOXD_FAKE_AUDIO"));
  page = await (await browser.newContext()).newPage();
  page.on("pageerror", (err) => pageErrors.push(err.message));
});

after(async () => {
  await browser?.close();
});

test("a spoken question over WebRTC is transcribed and answered aloud", { timeout: 200000 }, async () => {
  await page.goto(env("VOXD_URL"));
  await page.click("#settings summary");
  await page.fill("#api-key", env("VOXD_API_KEY"));
  await page.selectOption("#transport", "webrtc");
  await page.click("#settings-form button[type=submit]");
  await page.click("#start");
  await page.waitForSelector("#start[aria-pressed=true]", { timeout: 30000 });
  assert.match(await page.locator("#connection").innerText(), /WebRTC/);
  await page.waitForSelector(".turn .answer[data-status=completed]", { timeout: 180000 });
  const transcript = (await page.locator(".turn .transcript").allInnerTexts()).join(" ");
  const score = wer(env("VOXD_QUESTION_TEXT"), transcript);
  assert.ok(score <= 0.35, `WER ${score.toFixed(2)}: ${transcript}`);
  const answer = await page.locator(".turn .answer[data-status=completed] .answer-text").first().innerText();
  assert.match(answer, /10/, answer);
  // The answer's audio came on the call's track (Opus, decoded by the browser).
  let bytes = 0;
  for (let i = 0; i < 50 && bytes < 4000; i++) {
    bytes = await page.evaluate(async () => {
      let n = 0;
      (await window.voxdSession.peer.getStats()).forEach((r) => {
        if (r.type === "inbound-rtp" && r.kind === "audio") n += r.bytesReceived;
      });
      return n;
    });
    if (bytes < 4000) await page.waitForTimeout(200);
  }
  assert.ok(bytes >= 4000, `${bytes} bytes of answer audio received`);
  // Stop: the call is hung up.
  await page.click("#start");
  assert.equal(await page.getAttribute("#start", "aria-pressed"), "false");
  assert.deepEqual(pageErrors, []);
});
