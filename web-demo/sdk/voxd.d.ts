// Type declarations for voxd.js, voxd's realtime client (OpenAI Realtime API wire format).

/** voxd's timing extension on a completed transcription (ms). */
export interface TranscriptionTiming {
  speech_end_ms: number | null;
  audio_ms: number;
  asr_queue_ms: number;
  asr_ms: number;
  speculative: boolean;
  speech_stopped_to_completed_ms?: number;
}

/** voxd's timing extension on `response.done` (ms). */
export interface ResponseTiming {
  retrieval_ms: number | null;
  grounded: boolean | null;
  first_token_ms: number | null;
  speech_stopped_to_first_token_ms: number | null;
  /** Spoken answers: from the response's start, and from the end of speech, to the first audio. */
  first_audio_ms?: number | null;
  speech_stopped_to_first_audio_ms?: number | null;
  /** Spoken answers: the length of the audio sent. */
  audio_ms?: number | null;
  total_ms: number;
  llm_queue_ms: number;
  llm_prefill_ms: number;
  prompt_tokens: number;
  cached_tokens: number;
  tokens_per_second: number;
}

/** A source passage an answer was grounded on. */
export interface Citation {
  index: number;
  document_id: string;
  title: string;
  uri: string | null;
  source: string;
  heading: string;
  quote: string;
  similarity: number;
  chunk_id: number;
  char_start: number;
  char_end: number;
}

export interface ErrorBody {
  type: string;
  code: string | null;
  message: string;
  param: string | null;
  event_id: string | null;
}

export interface ContentPart {
  type: string;
  text?: string;
  transcript?: string | null;
}

export interface Item {
  id: string;
  type: "message";
  role: "user" | "assistant" | "system";
  status?: string;
  content: ContentPart[];
}

export interface ResponseObject {
  id: string;
  object: "realtime.response";
  status: "in_progress" | "completed" | "cancelled" | "incomplete" | "failed";
  status_details: unknown;
  output: Item[];
  /** `citations` is a JSON string of {@link Citation}[]; `grounded` is "true" / "false" / "none". */
  metadata: { citations: string; grounded: string } | null;
  usage: {
    total_tokens: number;
    input_tokens: number;
    output_tokens: number;
  } | null;
  voxd_timing?: ResponseTiming;
}

/** The events voxd sends, by type. */
export interface ServerEvents {
  "session.created": { type: "session.created"; event_id: string; session: Record<string, any> };
  "session.updated": { type: "session.updated"; event_id: string; session: Record<string, any> };
  "input_audio_buffer.speech_started": {
    type: "input_audio_buffer.speech_started";
    audio_start_ms: number;
    item_id: string;
  };
  "input_audio_buffer.speech_stopped": {
    type: "input_audio_buffer.speech_stopped";
    audio_end_ms: number;
    item_id: string;
  };
  "input_audio_buffer.committed": {
    type: "input_audio_buffer.committed";
    item_id: string;
    previous_item_id: string | null;
  };
  "conversation.item.input_audio_transcription.delta": {
    type: "conversation.item.input_audio_transcription.delta";
    item_id: string;
    content_index: number;
    /** Text to append to the partial transcript (voxd sends only words that have settled). */
    delta: string;
  };
  "conversation.item.input_audio_transcription.completed": {
    type: "conversation.item.input_audio_transcription.completed";
    item_id: string;
    content_index: number;
    transcript: string;
    voxd_timing?: TranscriptionTiming;
  };
  "conversation.item.input_audio_transcription.failed": {
    type: "conversation.item.input_audio_transcription.failed";
    item_id: string;
    error: ErrorBody;
  };
  "response.created": { type: "response.created"; response: ResponseObject };
  "response.output_text.delta": {
    type: "response.output_text.delta";
    response_id: string;
    item_id: string;
    delta: string;
  };
  "response.output_text.done": {
    type: "response.output_text.done";
    response_id: string;
    item_id: string;
    text: string;
  };
  "response.output_audio.delta": {
    type: "response.output_audio.delta";
    response_id: string;
    item_id: string;
    /** Base64 audio in the session's output format (PCM16 at 24 kHz by default). */
    delta: string;
  };
  "response.output_audio.done": { type: "response.output_audio.done"; response_id: string; item_id: string };
  "response.output_audio_transcript.delta": {
    type: "response.output_audio_transcript.delta";
    response_id: string;
    item_id: string;
    delta: string;
  };
  "response.output_audio_transcript.done": {
    type: "response.output_audio_transcript.done";
    response_id: string;
    item_id: string;
    transcript: string;
  };
  /** Emitted by the SDK for a binary frame: raw audio of the spoken answer (voxd.binary_audio_out). */
  "voxd.output_audio": { type: "voxd.output_audio"; response_id: string | null; item_id: string | null; audio: Uint8Array };
  "conversation.item.truncated": {
    type: "conversation.item.truncated";
    item_id: string;
    content_index: number;
    audio_end_ms: number;
  };
  "voxd.response.citations": {
    type: "voxd.response.citations";
    response_id: string;
    citations: Citation[];
  };
  "response.done": { type: "response.done"; response: ResponseObject };
  error: { type: "error"; error: ErrorBody };
  /** Emitted by the SDK when the socket closes. */
  "voxd.closed": { type: "voxd.closed"; code: number; reason: string };
}

export type ServerEvent = ServerEvents[keyof ServerEvents] | { type: string; [key: string]: any };

export class VoxdError extends Error {
  code: string;
  event?: unknown;
}

export class StreamingResampler {
  constructor(fromRate: number, toRate: number, halfTaps?: number);
  readonly fromRate: number;
  readonly toRate: number;
  process(input: Float32Array): Float32Array;
}

export function floatToPcm16(samples: Float32Array): Int16Array;
export function base64(bytes: Uint8Array): string;
export function fromBase64(text: string): Uint8Array;
/** 16-bit little-endian PCM (bytes or base64) as floats in -1..1. */
export function pcm16ToFloat(data: Uint8Array | string): Float32Array;

/** Plays spoken answers with Web Audio behind a small jitter buffer. */
export class AudioPlayer {
  constructor(context: AudioContext, options?: { sampleRate?: number; jitterMs?: number });
  /** Queues audio of an item: base64 PCM16, its bytes, or floats. */
  enqueue(itemId: string, audio: string | Uint8Array | Float32Array): void;
  readonly playing: boolean;
  /** Milliseconds of the current item played so far. */
  playedMs(): number;
  /** Stops at once; what was playing and how much of it was heard. */
  stop(): { itemId: string; playedMs: number } | null;
}

export interface ConnectOptions {
  apiKey?: string;
  /** A `session.update` body applied before `connect` resolves. */
  session?: Record<string, any>;
  /** The PCM16 rate voxd is told to expect (default 16000). */
  inputRate?: number;
  /** Audio as binary frames (voxd extension, default) or base64 `append` events. */
  binary?: boolean;
  WebSocket?: new (url: string, protocols?: string[]) => WebSocket;
  timeoutMs?: number;
}

export class VoxdSession implements AsyncIterable<ServerEvent> {
  readonly state: "connecting" | "open" | "closing" | "closed";
  readonly session: Record<string, any> | null;
  readonly activeResponseId: string | null;
  readonly activeItemId: string | null;
  inputRate: number;
  on<K extends keyof ServerEvents>(type: K, callback: (event: ServerEvents[K]) => void): () => void;
  on(type: "*" | string, callback: (event: ServerEvent) => void): () => void;
  waitFor<K extends keyof ServerEvents>(
    type: K,
    options?: { timeoutMs?: number; rejectOnError?: boolean },
  ): Promise<ServerEvents[K]>;
  [Symbol.asyncIterator](): AsyncIterator<ServerEvent>;
  send(event: { type: string; [key: string]: any }): string;
  updateSession(session: Record<string, any>): Promise<Record<string, any>>;
  sendAudio(samples: Int16Array | Float32Array, rate?: number): void;
  commit(): string;
  clear(): string;
  createResponse(response?: Record<string, any>): string;
  cancelResponse(): string | null;
  sendText(text: string): string;
  /** Plays spoken answers on `player`; stops it and truncates the answer on barge-in. */
  attachPlayer(player: AudioPlayer): () => void;
  /** Stops `player` and sends `conversation.item.truncate` for what was heard. */
  interrupt(player: AudioPlayer): { itemId: string; playedMs: number } | null;
  close(code?: number, reason?: string): void;
}

export function connect(url: string, options?: ConnectOptions): Promise<VoxdSession>;

export interface WebRTCOptions {
  /** An API key or a client secret (`ek_…`). */
  apiKey?: string;
  /** The microphone; without one the call only listens (typed questions are answered aloud). */
  microphone?: MediaStream;
  /** A `session.update` body applied before the promise resolves. */
  session?: Record<string, any>;
  RTCPeerConnection?: new (config?: RTCConfiguration) => RTCPeerConnection;
  timeoutMs?: number;
}

export interface WebRTCSession extends VoxdSession {
  readonly peer: RTCPeerConnection;
  /** The spoken answers, for an <audio> element. */
  readonly remoteAudio: Promise<MediaStream>;
  /** Stops the answer playing now (`output_audio_buffer.clear`). */
  stopAudio(): string;
}

/** A session over WebRTC (`POST /v1/realtime/calls`); `close()` hangs up. */
export function connectWebRTC(baseUrl: string, options?: WebRTCOptions): Promise<WebRTCSession>;
