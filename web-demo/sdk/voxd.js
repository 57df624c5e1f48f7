// voxd realtime client: an ES module for browsers and Node (18+ with a global WebSocket, or pass
// one). It speaks the OpenAI Realtime API, so it also works against other compatible servers
// (set `binary: false`: raw binary audio frames are a voxd extension).
//
//   import { connect } from "/sdk/voxd.js";
//   const session = await connect("ws://127.0.0.1:8080/v1/realtime", { apiKey });
//   session.on("conversation.item.input_audio_transcription.completed", (e) => show(e.transcript));
//   session.on("response.output_text.delta", (e) => append(e.delta));
//   session.sendAudio(float32Samples, 48000); // resampled to the session's rate
//   for await (const event of session) { ... } // or iterate every event
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
    /** The id of the response in progress, if any. */
    this.activeResponseId = null;
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

  /** Closes the socket. */
  close(code = 1000, reason = "bye") {
    if (this.state === "closed" || this.state === "closing") return;
    this.state = "closing";
    this.socket.close(code, reason);
  }

  #onMessage(message) {
    if (typeof message.data !== "string") return;
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
