// AudioWorklet processor: collects the microphone's first channel into 20 ms chunks at the
// AudioContext's rate and posts them, with their peak level, to the page (which streams them
// through voxd.js; the SDK resamples to the session's rate).
class MicChunker extends AudioWorkletProcessor {
  constructor() {
    super();
    this.size = Math.round(sampleRate / 50);
    this.chunk = new Float32Array(this.size);
    this.filled = 0;
  }

  process(inputs) {
    const channel = inputs[0] && inputs[0][0];
    if (!channel) return true;
    let offset = 0;
    while (offset < channel.length) {
      const n = Math.min(channel.length - offset, this.size - this.filled);
      this.chunk.set(channel.subarray(offset, offset + n), this.filled);
      this.filled += n;
      offset += n;
      if (this.filled === this.size) {
        let peak = 0;
        for (const s of this.chunk) peak = Math.max(peak, Math.abs(s));
        this.port.postMessage({ samples: this.chunk, peak }, [this.chunk.buffer]);
        this.chunk = new Float32Array(this.size);
        this.filled = 0;
      }
    }
    return true;
  }
}

registerProcessor("voxd-mic", MicChunker);
