// The web demo on a server that requires an API key, started with --demo-client-secrets: the
// page is given no key; it asks its server for a short-lived client secret for each session
// (POST /demo/client_secret) and a typed question is answered. The server's key never reaches
// the browser.
import { test, after, before } from "node:test";
import assert from "node:assert/strict";

import { chromium } from "playwright-core";
import { env } from "./helpers.mjs";

let browser;
let page;
const secrets = [];

before(async () => {
  browser = await chromium.launch({
    executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
    args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run"],
  });
  page = await (await browser.newContext()).newPage();
  page.on("response", async (r) => {
    if (r.url().endsWith("/demo/client_secret")) secrets.push({ status: r.status(), body: await r.json() });
  });
});

after(async () => {
  await browser?.close();
});

test("a typed question is answered in a session opened with a client secret", { timeout: 200000 }, async () => {
  await page.goto(env("VOXD_URL"));
  assert.equal(await page.inputValue("#api-key"), "");
  await page.fill("#question", "What time do you open on Sunday?");
  await page.click("#ask button[type=submit]");
  const answer = page.locator(".turn .answer").first();
  await page.waitForSelector(".turn .answer:not([data-status=in_progress])", { timeout: 180000 });
  assert.equal(await answer.getAttribute("data-status"), "completed");
  assert.ok((await answer.locator(".answer-text").innerText()).trim().length > 0);
  assert.equal(secrets.length, 1);
  assert.equal(secrets[0].status, 200);
  assert.match(secrets[0].body.value, /^ek_/);
  // Nothing the page holds is the server's key.
  const stored = await page.evaluate(() => JSON.stringify({ ...localStorage }));
  const html = await page.content();
  for (const place of [stored, html]) assert.ok(!place.includes(env("VOXD_API_KEY")));
});

test("another site's page cannot get a demo secret", async () => {
  const r = await fetch(`${env("VOXD_URL")}/demo/client_secret`, {
    method: "POST",
    headers: { Origin: "http://evil.example" },
  });
  assert.equal(r.status, 403);
  assert.equal((await r.json()).error.code, "origin_not_allowed");
});
