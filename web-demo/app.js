// The voxd web demo: microphone → AudioWorklet → voxd.js (resampling, realtime WebSocket) →
// live transcript, streamed answer with sources, the server's spoken answer (Web Audio, stopped
// at once when you talk over it), and the server's own latency figures per turn. Also a small
// knowledge-base manager over the REST API.
import { AudioPlayer, connect, connectWebRTC } from "/sdk/voxd.js";

const $ = (id) => document.getElementById(id);
const ui = {
  start: $("start"),
  connection: $("connection"),
  level: $("level"),
  speak: $("speak"),
  stopAnswer: $("stop-answer"),
  ask: $("ask"),
  question: $("question"),
  notice: $("notice"),
  turns: $("turns"),
  empty: $("empty"),
  template: $("turn-template"),
};

// ---- settings (kept in localStorage) ----
const SETTINGS_KEY = "voxd-demo-settings";
const defaults = { silence: 500, partials: 500, instructions: "", apiKey: "", speak: true, transport: "webrtc" };
const settings = { ...defaults, ...JSON.parse(localStorage.getItem(SETTINGS_KEY) ?? "{}") };
$("silence").value = settings.silence;
$("partials").value = settings.partials;
$("instructions").value = settings.instructions;
$("api-key").value = settings.apiKey;
$("transport").value = settings.transport;
ui.speak.checked = settings.speak;

function sessionConfig() {
  const config = {
    // The server's voice speaks the answers; without one (or with speech off) they are text.
    output_modalities: [settings.speak ? "audio" : "text"],
    audio: {
      input: {
        turn_detection: {
          type: "server_vad",
          silence_duration_ms: Number(settings.silence),
          create_response: true,
          interrupt_response: true,
        },
      },
    },
    voxd: { partial_interval_ms: Number(settings.partials), citations_event: true },
  };
  if (settings.instructions.trim()) config.instructions = settings.instructions.trim();
  return config;
}

$("settings-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  Object.assign(settings, {
    silence: Number($("silence").value),
    partials: Number($("partials").value),
    instructions: $("instructions").value,
    apiKey: $("api-key").value.trim(),
    transport: $("transport").value,
  });
  localStorage.setItem(SETTINGS_KEY, JSON.stringify(settings));
  if (session?.state === "open") {
    try {
      await session.updateSession(sessionConfig());
      notice("");
    } catch (err) {
      notice(`Settings not applied: ${err.message}`);
    }
  }
  loadDocuments();
});
ui.speak.addEventListener("change", () => {
  settings.speak = ui.speak.checked;
  localStorage.setItem(SETTINGS_KEY, JSON.stringify(settings));
  if (!settings.speak) stopSpeaking();
  if (session?.state === "open") session.updateSession(sessionConfig()).catch((err) => notice(err.message));
});

function notice(text) {
  ui.notice.textContent = text;
  ui.notice.hidden = !text;
}

function setConnection(state, text) {
  ui.connection.dataset.state = state;
  ui.connection.textContent = text;
}

// ---- the session ----
let session = null;
let mic = null;
// Plays the server's spoken answers; made on the first click (browsers need a gesture).
let player = null;
function ensurePlayer() {
  if (!player) {
    player = new AudioPlayer(new AudioContext());
    window.voxdPlayer = player; // for tests and the curious
    // An answer can be stopped while it is generated or still playing.
    setInterval(() => {
      ui.stopAnswer.disabled = !(session?.activeResponseId || player.playing);
    }, 200);
  }
  return player;
}
// Whether the server speaks this session's answers (else the browser's voice is the fallback).
const serverSpeaks = () => session?.session?.output_modalities?.includes("audio") ?? false;
const turnsByItem = new Map();
const turnsByAnswerItem = new Map();
const answers = new Map();
// The turn the next response answers: the last one transcribed, or the last typed question.
let answerableTurn = null;

function newTurn(itemId) {
  const li = ui.template.content.firstElementChild.cloneNode(true);
  ui.turns.append(li);
  ui.empty.hidden = true;
  const turn = {
    li,
    transcript: li.querySelector(".transcript"),
    partial: li.querySelector(".partial"),
    answer: li.querySelector(".answer"),
    answerText: li.querySelector(".answer-text"),
    citations: li.querySelector(".citations"),
    latency: li.querySelector(".latency"),
    timing: null,
    answered: false,
  };
  if (itemId) turnsByItem.set(itemId, turn);
  return turn;
}

const turnFor = (itemId) => turnsByItem.get(itemId) ?? newTurn(itemId);

function wsUrl() {
  return `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/v1/realtime`;
}

// The key for one session: the one typed in Settings, or else a short-lived client secret the
// server mints for its own page (voxd serve --demo-client-secrets), so no API key is kept here.
async function sessionKey() {
  if (settings.apiKey) return settings.apiKey;
  const resp = await fetch("/demo/client_secret", { method: "POST" }).catch(() => null);
  if (!resp?.ok) return undefined;
  const { value } = await resp.json();
  return value;
}

// WebRTC unless it is off in Settings, the browser has none, or a call failed on this page
// (UDP blocked on the way: then the WebSocket, which needs nothing but this page's connection).
let webrtcFailed = false;
const webrtc = () => settings.transport === "webrtc" && "RTCPeerConnection" in window && !webrtcFailed;

async function openSession(microphone) {
  setConnection("connecting", "Connecting…");
  session = null;
  if (webrtc()) {
    // The microphone goes out on the call's track, the answers come back on one and the
    // browser plays them; the server stops them when you talk over them.
    try {
      session = await connectWebRTC(location.origin, {
        apiKey: await sessionKey(),
        microphone,
        session: sessionConfig(),
        timeoutMs: 10000,
      });
      const audio = $("answer-audio");
      audio.srcObject = await session.remoteAudio;
      audio.play().catch(() => {});
    } catch (err) {
      // A refused key or a full server is not WebRTC's fault: say so, do not fall back.
      if (err.code !== "connect_failed" && err.code !== "webrtc_unavailable") throw err;
      webrtcFailed = true;
      notice(`WebRTC did not connect (${err.message}); using the WebSocket.`);
    }
  }
  if (!session) {
    session = await connect(wsUrl(), { apiKey: await sessionKey(), session: sessionConfig() });
    // Spoken answers play as they arrive; talking over one stops it and tells the server what
    // was heard (conversation.item.truncate).
    session.attachPlayer(ensurePlayer());
  }
  window.voxdSession = session;
  setConnection("open", webrtc() ? "Connected (WebRTC)" : "Connected");
  session.on("input_audio_buffer.speech_started", (e) => {
    // Barge-in: the server cancels the answer in progress; the fallback voice stops too.
    if ("speechSynthesis" in window) speechSynthesis.cancel();
    const turn = turnFor(e.item_id);
    turn.partial.textContent = "…";
  });
  session.on("conversation.item.input_audio_transcription.delta", (e) => {
    const turn = turnFor(e.item_id);
    const before = turn.partial.textContent === "…" ? "" : turn.partial.textContent;
    turn.partial.textContent = before + e.delta;
  });
  session.on("conversation.item.input_audio_transcription.completed", (e) => {
    const turn = turnFor(e.item_id);
    turn.partial.textContent = "";
    turn.transcript.textContent = e.transcript.trim() || "(nothing recognised)";
    turn.timing = e.voxd_timing ?? null;
    answerableTurn = turn;
  });
  session.on("response.created", (e) => {
    const turn = answerableTurn && !answerableTurn.answered ? answerableTurn : newTurn(null);
    turn.answered = true;
    turn.answer.hidden = false;
    turn.answer.dataset.status = "in_progress";
    answers.set(e.response.id, { turn, spoken: 0, text: "" });
    ui.stopAnswer.disabled = false;
  });
  session.on("voxd.response.citations", (e) => {
    const a = answers.get(e.response_id);
    if (a) renderCitations(a.turn, e.citations);
  });
  session.on("response.output_text.delta", (e) => {
    const a = answers.get(e.response_id);
    if (!a) return;
    a.text += e.delta;
    a.turn.answerText.textContent = a.text;
    speakSentences(a, false);
  });
  // A spoken answer: its transcript arrives with its audio.
  session.on("response.output_audio_transcript.delta", (e) => {
    const a = answers.get(e.response_id);
    if (!a) return;
    a.text += e.delta;
    a.turn.answerText.textContent = a.text;
  });
  session.on("response.output_audio.delta", (e) => {
    const a = answers.get(e.response_id);
    if (!a) return;
    a.audioBytes = (a.audioBytes ?? 0) + Math.floor((e.delta.length * 3) / 4);
    a.turn.answer.dataset.audioMs = String(Math.round(a.audioBytes / 48));
  });
  session.on("conversation.item.truncated", (e) => {
    const turn = turnsByAnswerItem.get(e.item_id);
    if (turn) turn.answer.dataset.heardMs = String(e.audio_end_ms);
  });
  session.on("response.output_item.added", (e) => {
    const a = answers.get(e.response_id);
    if (a) turnsByAnswerItem.set(e.item.id, a.turn);
  });
  session.on("response.done", (e) => {
    const a = answers.get(e.response.id);
    ui.stopAnswer.disabled = true;
    if (!a) return;
    const status = e.response.status;
    a.turn.answer.dataset.status = status;
    if (status === "completed") speakSentences(a, true);
    if (e.response.voxd_timing?.audio_ms) a.turn.answer.dataset.audioMs = String(Math.round(e.response.voxd_timing.audio_ms));
    if (status === "failed") {
      a.turn.answerText.textContent = e.response.status_details?.error?.message ?? "The answer failed.";
    }
    if (!a.turn.citations.children.length && Array.isArray(e.response.voxd?.citations)) {
      renderCitations(a.turn, e.response.voxd.citations);
    }
    renderLatency(a.turn, e.response.voxd_timing);
    answers.delete(e.response.id);
  });
  session.on("error", (e) => notice(`${e.error.message} (${e.error.code ?? e.error.type})`));
  const mine = session;
  session.on("voxd.closed", (e) => {
    // A session replaced by a new call closes later: it must not close the new one's state.
    if (session !== mine) return;
    // A data channel closes without a code: normal.
    const normal = e.code === 1000 || e.code === undefined;
    setConnection(normal ? "idle" : "error", normal ? "Not connected" : `Closed (${e.code}${e.reason ? `: ${e.reason}` : ""})`);
    stopMic();
    session = null;
  });
}

// A citation's link, only for http(s) URIs: a document's `uri` is whatever its uploader wrote,
// and a `javascript:` or `data:` link would run in this page.
export function safeLink(uri) {
  try {
    const u = new URL(uri);
    return u.protocol === "http:" || u.protocol === "https:" ? u.href : null;
  } catch {
    return null;
  }
}

function renderCitations(turn, citations) {
  turn.citations.replaceChildren(
    ...citations.map((c) => {
      const li = document.createElement("li");
      const details = document.createElement("details");
      const summary = document.createElement("summary");
      const href = c.uri ? safeLink(c.uri) : null;
      const title = href ? Object.assign(document.createElement("a"), { href, target: "_blank", rel: "noopener noreferrer" }) : document.createElement("span");
      title.textContent = c.title || c.source;
      summary.append(title);
      if (c.heading) summary.append(` — ${c.heading}`);
      summary.title = c.quote;
      const quote = document.createElement("blockquote");
      quote.textContent = c.quote;
      details.append(summary, quote);
      li.append(details);
      return li;
    }),
  );
}

const ms = (x) => `${Math.round(x).toLocaleString()} ms`;

function renderLatency(turn, timing) {
  const parts = [];
  const t = turn.timing;
  if (t?.speech_stopped_to_completed_ms != null) parts.push(`speech stopped → transcript ${ms(t.speech_stopped_to_completed_ms)}`);
  if (timing?.speech_stopped_to_first_token_ms != null) {
    parts.push(`→ first token ${ms(timing.speech_stopped_to_first_token_ms)}`);
    if (timing.speech_stopped_to_first_audio_ms != null) parts.push(`→ first audio ${ms(timing.speech_stopped_to_first_audio_ms)}`);
    if (timing.first_token_ms != null) {
      parts.push(`→ done ${ms(timing.speech_stopped_to_first_token_ms - timing.first_token_ms + timing.total_ms)}`);
    }
  } else if (timing) {
    if (timing.first_token_ms != null) parts.push(`first token ${ms(timing.first_token_ms)}`);
    if (timing.first_audio_ms != null) parts.push(`first audio ${ms(timing.first_audio_ms)}`);
    parts.push(`done ${ms(timing.total_ms)}`);
  }
  const details = [];
  if (t) details.push(`ASR ${ms(t.asr_ms)}${t.speculative ? " (speculative)" : ""}`);
  if (timing?.retrieval_ms != null) details.push(`retrieval ${ms(timing.retrieval_ms)}`);
  if (timing?.tokens_per_second) details.push(`${timing.tokens_per_second.toFixed(0)} tokens/s`);
  turn.latency.textContent = [parts.join(" "), details.join(", ")].filter(Boolean).join(" · ");
  turn.latency.title = `Measured by the server. End of speech is followed by a ${settings.silence} ms pause before the turn ends.`;
}

// ---- the browser's own voice: the fallback when the server has none ----
function speakSentences(answer, final) {
  if (!settings.speak || serverSpeaks() || !("speechSynthesis" in window)) return;
  const rest = answer.text.slice(answer.spoken);
  const match = final ? rest : rest.match(/^[\s\S]*[.!?…](?=\s)/)?.[0];
  if (!match || !match.trim()) return;
  answer.spoken += match.length;
  speechSynthesis.speak(new SpeechSynthesisUtterance(match.trim()));
}

function stopSpeaking() {
  if ("speechSynthesis" in window) speechSynthesis.cancel();
  if (session?.stopAudio && session.state === "open") session.stopAudio();
  else if (player && session?.state === "open") session.interrupt(player);
  else player?.stop();
}

ui.stopAnswer.addEventListener("click", () => {
  stopSpeaking();
  session?.cancelResponse();
});

// ---- microphone ----
async function startMic() {
  const stream = await navigator.mediaDevices.getUserMedia({
    // Echo cancellation keeps spoken answers from being heard as a new turn (barge-in).
    audio: { channelCount: 1, echoCancellation: true, noiseSuppression: true, autoGainControl: true },
  });
  const ctx = new AudioContext();
  await ctx.audioWorklet.addModule("/mic-worklet.js");
  const node = new AudioWorkletNode(ctx, "voxd-mic");
  node.port.onmessage = ({ data }) => {
    ui.level.value = Math.min(1, data.peak);
    if (session?.state === "open") session.sendAudio(data.samples, ctx.sampleRate);
  };
  const source = ctx.createMediaStreamSource(stream);
  const mute = ctx.createGain();
  mute.gain.value = 0;
  source.connect(node).connect(mute).connect(ctx.destination);
  mic = { stream, ctx };
}

function stopMic() {
  if (mic) {
    mic.stream.getTracks().forEach((t) => t.stop());
    mic.ctx?.close();
    mic = null;
  }
  ui.level.value = 0;
  ui.start.textContent = "Start talking";
  ui.start.setAttribute("aria-pressed", "false");
}

ui.start.addEventListener("click", async () => {
  if (mic) {
    stopMic();
    session?.close();
    return;
  }
  notice("");
  ui.start.disabled = true;
  ensurePlayer();
  try {
    if (webrtc()) {
      // The track is part of the call: the microphone first, then the call.
      if (session) session.close();
      const stream = await navigator.mediaDevices.getUserMedia({
        audio: { channelCount: 1, echoCancellation: true, noiseSuppression: true, autoGainControl: true },
      });
      mic = { stream, ctx: null };
      await openSession(stream);
      if (!session.peer) {
        // Fell back to the WebSocket: the microphone goes through the worklet instead.
        stopMic();
        await startMic();
      }
    } else {
      if (!session) await openSession();
      await startMic();
    }
    ui.start.textContent = "Stop";
    ui.start.setAttribute("aria-pressed", "true");
  } catch (err) {
    setConnection("error", "Not connected");
    notice(err.name === "NotAllowedError" ? "The microphone is blocked: allow it for this page." : err.message);
    stopMic();
  } finally {
    ui.start.disabled = false;
  }
});

ui.ask.addEventListener("submit", async (e) => {
  e.preventDefault();
  const text = ui.question.value.trim();
  if (!text) return;
  ensurePlayer();
  try {
    if (!session) await openSession();
    stopSpeaking();
    const turn = newTurn(null);
    turn.transcript.textContent = text;
    answerableTurn = turn;
    session.sendText(text);
    ui.question.value = "";
  } catch (err) {
    setConnection("error", "Not connected");
    notice(err.message);
  }
});

// ---- knowledge base ----
const kbStatus = $("kb-status");

async function api(path, init = {}) {
  const headers = { ...(init.headers ?? {}) };
  if (settings.apiKey) headers.Authorization = `Bearer ${settings.apiKey}`;
  const resp = await fetch(path, { ...init, headers });
  const body = await resp.json().catch(() => ({}));
  if (!resp.ok) throw new Error(body.error?.message ?? `HTTP ${resp.status}`);
  return body;
}

async function loadDocuments() {
  const list = $("documents");
  try {
    const { data } = await api("/v1/kb/documents");
    list.replaceChildren(
      ...data.map((d) => {
        const li = document.createElement("li");
        li.textContent = `${d.title} (${d.chunks} passages)`;
        const del = document.createElement("button");
        del.type = "button";
        del.textContent = "Delete";
        del.setAttribute("aria-label", `Delete ${d.title}`);
        del.addEventListener("click", async () => {
          try {
            await api(`/v1/kb/documents/${encodeURIComponent(d.id)}`, { method: "DELETE" });
            kbStatus.textContent = `Deleted ${d.title}.`;
          } catch (err) {
            kbStatus.textContent = `Could not delete: ${err.message}`;
          }
          loadDocuments();
        });
        li.append(del);
        return li;
      }),
    );
    if (!data.length) kbStatus.textContent = "The knowledge base is empty: answers will not be grounded.";
  } catch (err) {
    kbStatus.textContent = `Knowledge base unavailable: ${err.message}`;
  }
}

$("upload").addEventListener("submit", async (e) => {
  e.preventDefault();
  const file = $("document").files[0];
  if (!file) {
    kbStatus.textContent = "Choose a file first.";
    return;
  }
  const form = new FormData();
  form.append("file", file, file.name);
  kbStatus.textContent = `Adding ${file.name}…`;
  try {
    const out = await api("/v1/kb/documents", { method: "POST", body: form });
    kbStatus.textContent = `${file.name}: ${out.status} (${out.document.chunks} passages).`;
    $("document").value = "";
  } catch (err) {
    kbStatus.textContent = `Could not add ${file.name}: ${err.message}`;
  }
  loadDocuments();
});

loadDocuments();
