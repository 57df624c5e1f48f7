// voxd realtime client: an ES module for browsers and Node (18+ with a global WebSocket, or pass
// one). It speaks the OpenAI Realtime API, so it also works against other compatible servers
// (set `binary: false`: raw binary audio frames are a voxd extension).
//
//   import { connect } from "/sdk/voxd.js";
//   const session = await connect("ws://127.0.0.1:8080/v1/realtime", { apiKey });
//   session.on("conversation.item.input_audio_transcription.completed", (e) => show(e.transcript));
//   session.on("response.output_audio_transcript.delta", (e) => append(e.delta));
//   session.attachPlayer(new AudioPlayer(new AudioContext())); // plays spoken answers, barge-in
//   session.on("response.output_text.delta", (e) => append(e.delta)); // text-only sessions
//   session.sendAudio(float32Samples, 48000); // resampled to the session's rate
//   for await (const event of session) { ... } // or iterate every event
//
// In a browser, a session can also run over WebRTC (the OpenAI Realtime API's browser path):
//
//   const mic = await navigator.mediaDevices.getUserMedia({ audio: true });
//   const session = await connectWebRTC("https://voxd.example", { apiKey, microphone: mic });
//   audioElement.srcObject = await session.remoteAudio; // the spoken answers, played by the browser
//
// Types: voxd.d.ts beside this file.

const DEFAULT_INPUT_RATE = 16000;

/** A typed failure: `code` is the server's error code, or a client-side one. */
export class VoxdError extends Error {
  constructor(code, message, event) {
    super(message);
    this.name = "VoxdError";
    this.code = code;
    this.event = event;
  }
}

/**
 * Streaming windowed-sinc resampler (Hann window). Keeps its state between calls, so a stream cut
 * into chunks of any size resamples exactly as one piece. Low-passes below the lower Nyquist
 * rate when downsampling, so 48 kHz microphone input does not alias into speech frequencies.
 */
export class StreamingResampler {
  constructor(fromRate, toRate, halfTaps = 16) {
    if (!(fromRate > 0 && toRate > 0)) throw new RangeError("sample rates must be positive");
    this.fromRate = fromRate;
    this.toRate = toRate;
    this.step = fromRate / toRate; // input samples per output sample
    this.cutoff = Math.min(1, toRate / fromRate) * 0.94; // of the input Nyquist rate
    this.half = Math.ceil(halfTaps / this.cutoff); // filter half-width, in input samples
    // `half` zeros of history, so the first output sample lines up with the first input sample.
    this.buffer = new Float32Array(this.half);
    this.pos = this.half;
    this.kernels = new Map();
  }

  /**
   * The filter taps for an output sample `frac` (0..1) past an input sample, rounded to a
   * millionth of a sample. Common rate pairs repeat a few phases (48k->16k: one; 44.1k->16k:
   * 160), so the taps are computed once per phase instead of a sine and a cosine per tap.
   */
  #kernel(frac) {
    const key = Math.round(frac * 1e6);
    let w = this.kernels.get(key);
    if (!w) {
      const f = key / 1e6;
      const { half, cutoff } = this;
      w = new Float32Array(2 * half);
      for (let j = 0; j < w.length; j++) {
        const d = f - (j - half + 1);
        const x = Math.PI * d * cutoff;
        const sinc = x === 0 ? 1 : Math.sin(x) / x;
        w[j] = cutoff * sinc * (0.5 + 0.5 * Math.cos((Math.PI * d) / half));
      }
      if (this.kernels.size < 4096) this.kernels.set(key, w);
    }
    return w;
  }

  /** Resamples the next chunk; returns the output samples that chunk completes. */
  process(input) {
    if (this.fromRate === this.toRate) return Float32Array.from(input);
    const joined = new Float32Array(this.buffer.length + input.length);
    joined.set(this.buffer);
    joined.set(input, this.buffer.length);
    const { half, step } = this;
    const out = [];
    let pos = this.pos;
    while (Math.floor(pos) + half < joined.length) {
      const center = Math.floor(pos);
      const w = this.#kernel(pos - center);
      const first = center - half + 1;
      let acc = 0;
      for (let j = 0; j < w.length; j++) acc += joined[first + j] * w[j];
      out.push(acc);
      pos += step;
    }
    const drop = Math.max(0, Math.floor(pos) - half);
    this.buffer = joined.slice(drop);
    this.pos = pos - drop;
    return Float32Array.from(out);
  }
}

/** Float samples in [-1, 1] to 16-bit PCM. */
export function floatToPcm16(samples) {
  const out = new Int16Array(samples.length);
  for (let i = 0; i < samples.length; i++) {
    const s = Math.max(-1, Math.min(1, samples[i]));
    out[i] = Math.round(s * 32767);
  }
  return out;
}

const B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/** Standard base64 of bytes (no dependency on btoa or Buffer). */
export function base64(bytes) {
  let s = "";
  let i = 0;
  for (; i + 2 < bytes.length; i += 3) {
    const n = (bytes[i] << 16) | (bytes[i + 1] << 8) | bytes[i + 2];
    s += B64[n >> 18] + B64[(n >> 12) & 63] + B64[(n >> 6) & 63] + B64[n & 63];
  }
  if (i < bytes.length) {
    const n = (bytes[i] << 16) | ((bytes[i + 1] ?? 0) << 8);
    s += B64[n >> 18] + B64[(n >> 12) & 63];
    s += i + 1 < bytes.length ? B64[(n >> 6) & 63] + "=" : "==";
  }
  return s;
}

/** The bytes of standard base64 (no dependency on atob or Buffer). */
export function fromBase64(text) {
  const clean = text.replace(/[^A-Za-z0-9+/]/g, "");
  const out = new Uint8Array(Math.floor((clean.length * 3) / 4));
  let bits = 0;
  let value = 0;
  let n = 0;
  for (const c of clean) {
    value = ((value << 6) | B64.indexOf(c)) & 0xffffff;
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      out[n++] = (value >> bits) & 0xff;
    }
  }
  return out.subarray(0, n);
}

/** 16-bit little-endian PCM bytes (or their base64) as float samples in -1..1. */
export function pcm16ToFloat(data) {
  const bytes = typeof data === "string" ? fromBase64(data) : data;
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const out = new Float32Array(bytes.byteLength >> 1);
  for (let i = 0; i < out.length; i++) out[i] = view.getInt16(2 * i, true) / 32768;
  return out;
}

/**
 * Plays spoken answers (`response.output_audio.delta`, PCM16 at 24 kHz) with Web Audio. Chunks
 * are scheduled back to back behind a small jitter buffer, so network hiccups do not click.
 * `stop()` silences it at once and says how much of the item was played: the `audio_end_ms` a
 * `conversation.item.truncate` needs, so the server's history holds only what was heard.
 */
export class AudioPlayer {
  constructor(context, { sampleRate = 24000, jitterMs = 150 } = {}) {
    this.context = context;
    this.sampleRate = sampleRate;
    this.jitter = jitterMs / 1000;
    this.sources = new Set();
    this.nextTime = 0;
    this.item = null; // { id, start: context time of its first sample, ms: audio queued }
  }

  /** Queues audio of `itemId` (base64 PCM16, bytes, or floats). */
  enqueue(itemId, audio) {
    const samples = audio instanceof Float32Array ? audio : pcm16ToFloat(audio);
    if (!samples.length) return;
    const ctx = this.context;
    if (ctx.state === "suspended") ctx.resume();
    const now = ctx.currentTime;
    if (this.nextTime < now) this.nextTime = now + this.jitter; // (re)start behind the buffer
    if (this.item?.id !== itemId) this.item = { id: itemId, start: this.nextTime, ms: 0 };
    const buffer = ctx.createBuffer(1, samples.length, this.sampleRate);
    buffer.copyToChannel(samples, 0);
    const source = ctx.createBufferSource();
    source.buffer = buffer;
    source.connect(ctx.destination);
    source.onended = () => this.sources.delete(source);
    source.start(this.nextTime);
    this.sources.add(source);
    this.nextTime += samples.length / this.sampleRate;
    this.item.ms += (samples.length / this.sampleRate) * 1000;
  }

  /** Whether audio is playing or queued. */
  get playing() {
    return this.sources.size > 0;
  }

  /** Milliseconds of the current item played so far. */
  playedMs() {
    if (!this.item) return 0;
    const ms = (this.context.currentTime - this.item.start) * 1000;
    return Math.round(Math.max(0, Math.min(this.item.ms, ms)));
  }

  /** Stops at once; returns `{ itemId, playedMs }` of the item that was playing, or null. */
  stop() {
    const played = this.playing && this.item ? { itemId: this.item.id, playedMs: this.playedMs() } : null;
    for (const s of this.sources) {
      try {
        s.stop();
      } catch {
        // already stopped
      }
    }
    this.sources.clear();
    this.nextTime = 0;
    this.item = null;
    return played;
  }
}

let eventCounter = 0;
const eventId = () => `evt_sdk_${Date.now().toString(36)}_${(eventCounter++).toString(36)}`;

/**
 * One realtime session over a WebSocket. Create it with {@link connect}.
 */
export class VoxdSession {
  constructor(socket, options = {}) {
    this.socket = socket;
    this.binary = options.binary ?? true;
    this.inputRate = options.inputRate ?? DEFAULT_INPUT_RATE;
    this.state = "connecting";
    /** The server's view of the session, from `session.created` / `session.updated`. */
    this.session = null;
    /** The id of the response in progress, if any, and of its output item. */
    this.activeResponseId = null;
    this.activeItemId = null;
    this.listeners = new Map();
    this.queue = [];
    this.waiters = [];
    this.resamplers = new Map();
    this.closeInfo = null;
    socket.binaryType = "arraybuffer";
    socket.addEventListener("message", (m) => this.#onMessage(m));
    socket.addEventListener("close", (c) => this.#onClose(c));
    socket.addEventListener("error", () => {
      this.#emit({ type: "voxd.socket_error" });
      // Some WebSocket implementations (Node 20's) fire no close after a refused handshake.
      if (this.state === "connecting") this.#onClose({ code: 1006, reason: "connection failed" });
    });
  }

  /**
   * Calls `callback` for each event of `type` (`"*"` for every event). Returns a function that
   * removes the listener.
   */
  on(type, callback) {
    if (!this.listeners.has(type)) this.listeners.set(type, new Set());
    this.listeners.get(type).add(callback);
    return () => this.listeners.get(type)?.delete(callback);
  }

  /** Resolves with the next event of `type` (rejects on an `error` event if `rejectOnError`). */
  waitFor(type, { timeoutMs = 60000, rejectOnError = false } = {}) {
    return new Promise((resolve, reject) => {
      const offs = [];
      const done = (f, v) => {
        offs.forEach((off) => off());
        clearTimeout(timer);
        f(v);
      };
      const timer = setTimeout(
        () => done(reject, new VoxdError("timeout", `no ${type} within ${timeoutMs} ms`)),
        timeoutMs,
      );
      offs.push(this.on(type, (e) => done(resolve, e)));
      offs.push(
        this.on("voxd.closed", (e) =>
          done(reject, new VoxdError("closed", `the session closed (${e.code} ${e.reason})`, e)),
        ),
      );
      if (rejectOnError) {
        offs.push(
          this.on("error", (e) =>
            done(reject, new VoxdError(e.error?.code ?? "error", e.error?.message ?? "error", e)),
          ),
        );
      }
    });
  }

  /** Every event, in order, until the session closes. */
  async *[Symbol.asyncIterator]() {
    for (;;) {
      if (this.queue.length) {
        yield this.queue.shift();
        continue;
      }
      if (this.state === "closed") return;
      await new Promise((resolve) => this.waiters.push(resolve));
    }
  }

  /** Sends any client event (an `event_id` is added when missing). Returns the event id. */
  send(event) {
    if (this.state === "closed" || this.state === "closing") {
      throw new VoxdError("closed", "the session is closed");
    }
    const withId = { event_id: eventId(), ...event };
    this.socket.send(JSON.stringify(withId));
    return withId.event_id;
  }

  /**
   * `session.update`; resolves with the updated session, or rejects with the server's error
   * (such as `invalid_session_config`).
   */
  async updateSession(session) {
    const format = session?.audio?.input?.format;
    const id = this.send({ type: "session.update", session });
    const result = await new Promise((resolve, reject) => {
      const offs = [
        this.on("session.updated", (e) => {
          offs.forEach((off) => off());
          resolve(e.session);
        }),
        this.on("error", (e) => {
          if (e.error?.event_id && e.error.event_id !== id) return;
          offs.forEach((off) => off());
          reject(new VoxdError(e.error?.code ?? "error", e.error?.message ?? "error", e));
        }),
        this.on("voxd.closed", () => {
          offs.forEach((off) => off());
          reject(new VoxdError("closed", "the session closed"));
        }),
      ];
    });
    if (format?.rate) this.inputRate = format.rate;
    return result;
  }

  /**
   * Streams audio. `Int16Array` is PCM16; `Float32Array` is samples in [-1, 1]. Either is
   * resampled from `rate` to the session's input rate when they differ (state is kept per source
   * rate, so call it with consecutive chunks of one stream).
   */
  sendAudio(samples, rate = this.inputRate) {
    let floats = null;
    let pcm;
    if (samples instanceof Int16Array) {
      if (rate === this.inputRate) pcm = samples;
      else floats = Float32Array.from(samples, (s) => s / 32768);
    } else if (samples instanceof Float32Array) {
      floats = samples;
    } else {
      throw new TypeError("sendAudio takes an Int16Array or a Float32Array");
    }
    if (!pcm) {
      if (rate !== this.inputRate) {
        let r = this.resamplers.get(rate);
        if (!r || r.toRate !== this.inputRate) {
          r = new StreamingResampler(rate, this.inputRate);
          this.resamplers.set(rate, r);
        }
        floats = r.process(floats);
      }
      pcm = floatToPcm16(floats);
    }
    if (pcm.length === 0) return;
    if (this.state !== "open") throw new VoxdError("closed", "the session is not open");
    const bytes = new Uint8Array(pcm.buffer, pcm.byteOffset, pcm.byteLength);
    if (this.binary) {
      this.socket.send(bytes);
    } else {
      this.send({ type: "input_audio_buffer.append", audio: base64(bytes) });
    }
  }

  /** Ends the turn by hand (when turn detection is off). */
  commit() {
    return this.send({ type: "input_audio_buffer.commit" });
  }

  /** Drops buffered audio. */
  clear() {
    return this.send({ type: "input_audio_buffer.clear" });
  }

  /** Asks for a response to the conversation so far. */
  createResponse(response) {
    return this.send(response ? { type: "response.create", response } : { type: "response.create" });
  }

  /** Cancels the response in progress (no-op when none is). */
  cancelResponse() {
    if (!this.activeResponseId) return null;
    return this.send({ type: "response.cancel", response_id: this.activeResponseId });
  }

  /** Adds a typed user message to the conversation and asks for an answer. */
  sendText(text) {
    this.send({
      type: "conversation.item.create",
      item: { type: "message", role: "user", content: [{ type: "input_text", text }] },
    });
    return this.createResponse();
  }

  /**
   * Plays this session's spoken answers on `player` (an AudioPlayer). When the person starts
   * talking over an answer, playback stops at once and the server is told how much was heard
   * (`conversation.item.truncate`). Returns a function that detaches the player.
   */
  attachPlayer(player) {
    const offs = [
      this.on("response.output_audio.delta", (e) => player.enqueue(e.item_id, e.delta)),
      this.on("voxd.output_audio", (e) => player.enqueue(e.item_id, e.audio)),
      this.on("input_audio_buffer.speech_started", () => this.interrupt(player)),
    ];
    return () => offs.forEach((off) => off());
  }

  /** Stops `player` and tells the server what was heard of the answer it was playing. */
  interrupt(player) {
    const played = player.stop();
    if (played && this.state === "open") {
      this.send({
        type: "conversation.item.truncate",
        item_id: played.itemId,
        content_index: 0,
        audio_end_ms: played.playedMs,
      });
    }
    return played;
  }

  /** Closes the socket. */
  close(code = 1000, reason = "bye") {
    if (this.state === "closed" || this.state === "closing") return;
    this.state = "closing";
    this.socket.close(code, reason);
  }

  #onMessage(message) {
    if (typeof message.data !== "string") {
      // A binary frame: the spoken answer's raw audio (session.voxd.binary_audio_out).
      if (message.data instanceof ArrayBuffer) {
        this.#emit({
          type: "voxd.output_audio",
          response_id: this.activeResponseId,
          item_id: this.activeItemId,
          audio: new Uint8Array(message.data),
        });
      }
      return;
    }
    let event;
    try {
      event = JSON.parse(message.data);
    } catch {
      event = { type: "voxd.invalid_message", data: message.data };
    }
    switch (event.type) {
      case "session.created":
      case "session.updated":
        this.session = event.session;
        if (event.type === "session.created") this.state = "open";
        break;
      case "response.created":
        this.activeResponseId = event.response?.id ?? null;
        break;
      case "response.output_item.added":
        this.activeItemId = event.item?.id ?? null;
        break;
      case "response.done":
        if (this.activeResponseId === event.response?.id) this.activeResponseId = null;
        break;
    }
    this.#emit(event);
  }

  #onClose(close) {
    if (this.state === "closed") return;
    this.state = "closed";
    this.closeInfo = { code: close.code, reason: close.reason };
    this.#emit({ type: "voxd.closed", code: close.code, reason: close.reason });
    this.waiters.splice(0).forEach((w) => w());
  }

  #emit(event) {
    if (!event.type?.startsWith("voxd.socket")) {
      this.queue.push(event);
      this.waiters.splice(0).forEach((w) => w());
    }
    for (const key of [event.type, "*"]) {
      for (const cb of this.listeners.get(key) ?? []) {
        try {
          cb(event);
        } catch (err) {
          queueMicrotask(() => {
            throw err;
          });
        }
      }
    }
  }
}

/**
 * Opens a realtime session and resolves once the server has sent `session.created` (and, with
 * `options.session`, applied that configuration). The API key travels as the
 * `openai-insecure-api-key.` subprotocol, which browsers can send (they cannot set headers).
 *
 * Options: `apiKey`, `session` (a `session.update` body), `inputRate` (default 16000: the audio
 * format voxd is told to expect), `binary` (default true: audio as binary frames, a voxd
 * extension; false sends base64 `input_audio_buffer.append` events), `WebSocket` (a constructor,
 * for Node versions without a global one), `timeoutMs`.
 */
export async function connect(url, options = {}) {
  const WS = options.WebSocket ?? globalThis.WebSocket;
  if (!WS) {
    throw new VoxdError(
      "no_websocket",
      "no WebSocket implementation: use Node 22+, `node --experimental-websocket`, or pass options.WebSocket",
    );
  }
  const protocols = ["realtime"];
  if (options.apiKey) protocols.push(`openai-insecure-api-key.${options.apiKey}`);
  const socket = new WS(url, protocols);
  const session = new VoxdSession(socket, options);
  try {
    await session.waitFor("session.created", { timeoutMs: options.timeoutMs ?? 30000 });
  } catch (err) {
    session.close();
    throw new VoxdError(
      "connect_failed",
      `could not open a realtime session at ${url}: ${err.message} (is the server up, ready, and the API key right?)`,
    );
  }
  const rate = options.inputRate ?? DEFAULT_INPUT_RATE;
  const requested = options.session ?? {};
  const audio = requested.audio ?? {};
  const input = audio.input ?? {};
  await session.updateSession({
    ...requested,
    audio: { ...audio, input: { format: { type: "audio/pcm", rate }, ...input } },
  });
  return session;
}

/** Resolves once `pc` has gathered its ICE candidates (voxd takes them in the offer), or after
 * `timeoutMs`. */
function iceGathered(pc, timeoutMs) {
  if (pc.iceGatheringState === "complete") return Promise.resolve();
  return new Promise((resolve) => {
    const timer = setTimeout(resolve, timeoutMs);
    pc.addEventListener("icegatheringstatechange", () => {
      if (pc.iceGatheringState === "complete") {
        clearTimeout(timer);
        resolve();
      }
    });
  });
}

/**
 * Opens a realtime session over WebRTC, as the OpenAI Realtime API's browser clients do: the
 * microphone goes out on an audio track, the answers come back on one (`session.remoteAudio`
 * resolves with their MediaStream, to play in an <audio> element), and the events travel on the
 * `oai-events` data channel with the same API as `connect`. The server owns playback: talking
 * over an answer stops it there, and `session.stopAudio()` stops it by hand. `close()` hangs up.
 *
 * Options: `apiKey` (or a client secret), `microphone` (a MediaStream; without one the call only
 * listens and typed questions are answered aloud), `session` (a `session.update` body),
 * `RTCPeerConnection` (a constructor, outside browsers), `timeoutMs`.
 */
export async function connectWebRTC(baseUrl, options = {}) {
  const PC = options.RTCPeerConnection ?? globalThis.RTCPeerConnection;
  if (!PC) throw new VoxdError("no_webrtc", "this environment has no RTCPeerConnection: use connect()");
  const base = baseUrl.replace(/\/+$/, "");
  const pc = new PC();
  const mic = options.microphone;
  for (const track of mic?.getAudioTracks() ?? []) pc.addTrack(track, mic);
  if (!mic) pc.addTransceiver("audio", { direction: "recvonly" });
  const channel = pc.createDataChannel("oai-events");
  const remoteAudio = new Promise((resolve) => {
    pc.addEventListener("track", (e) => resolve(e.streams[0] ?? new MediaStream([e.track])));
  });
  await pc.setLocalDescription(await pc.createOffer());
  await iceGathered(pc, 2000);
  const auth = options.apiKey ? { Authorization: `Bearer ${options.apiKey}` } : {};
  let resp;
  try {
    resp = await fetch(`${base}/v1/realtime/calls`, {
      method: "POST",
      headers: { ...auth, "Content-Type": "application/sdp" },
      body: pc.localDescription.sdp,
    });
  } catch (err) {
    pc.close();
    throw new VoxdError("connect_failed", `could not reach ${base}: ${err.message}`);
  }
  if (resp.status !== 201) {
    pc.close();
    const body = await resp.json().catch(() => ({}));
    throw new VoxdError(body.error?.code ?? "connect_failed", body.error?.message ?? `HTTP ${resp.status}`);
  }
  const location = resp.headers.get("Location");
  await pc.setRemoteDescription({ type: "answer", sdp: await resp.text() });
  const session = new VoxdSession(channel, options);
  session.peer = pc;
  session.remoteAudio = remoteAudio;
  session.stopAudio = () => session.send({ type: "output_audio_buffer.clear" });
  const closeChannel = session.close.bind(session);
  session.close = () => {
    closeChannel();
    pc.close();
    if (location) fetch(new URL(location, `${base}/`).href, { method: "DELETE", headers: auth }).catch(() => {});
  };
  try {
    await session.waitFor("session.created", { timeoutMs: options.timeoutMs ?? 30000 });
    if (options.session) await session.updateSession(options.session);
  } catch (err) {
    session.close();
    throw new VoxdError("connect_failed", `the WebRTC call opened no session: ${err.message}`);
  }
  return session;
}
