"""A WebRTC call to a real `voxd serve` from aiortc (PyPI), a peer nobody on the project wrote.

Run by tests/clients.rs, which starts the server and sets VOXD_URL, VOXD_API_KEY,
VOXD_AUDIO_DIR and VOXD_ARTIFACTS. As the OpenAI Realtime API's WebRTC clients do: an offer with a
microphone track (a recording, VOXD_QUESTION or JFK's clip, then silence, paced in real time) and an `oai-events` data channel,
POSTed as application/sdp to /v1/realtime/calls; then the events arrive on the channel and the
spoken answer on the audio track, which is saved for the Rust test to hear. Ends with a hang-up.
VOXD_CODEC=PCMU (or PCMA) offers only that G.711 codec, as a telephony gateway would.
"""

import asyncio
import fractions
import json
import os
import sys
import time
import urllib.error
import urllib.request
import wave

import av
from aiortc import MediaStreamTrack, RTCPeerConnection, RTCRtpSender, RTCSessionDescription

from transcripts import reference, wer

RATE = 16000
FRAME = 320  # 20 ms


class Microphone(MediaStreamTrack):
    """The clip, then silence, one 20 ms frame at a time in real time."""

    kind = "audio"

    def __init__(self, pcm, silence_s):
        super().__init__()
        self.pcm = pcm + b"\0\0" * int(RATE * silence_s)
        self.pos = 0
        self.start = None

    async def recv(self):
        if self.start is None:
            self.start = time.monotonic()
        n = self.pos // 2
        due = self.start + n / RATE
        await asyncio.sleep(max(0.0, due - time.monotonic()))
        chunk = self.pcm[self.pos : self.pos + FRAME * 2]
        if len(chunk) < FRAME * 2:
            chunk = chunk + b"\0" * (FRAME * 2 - len(chunk))
        self.pos += FRAME * 2
        frame = av.AudioFrame(format="s16", layout="mono", samples=FRAME)
        frame.planes[0].update(chunk)
        frame.sample_rate = RATE
        frame.pts = n
        frame.time_base = fractions.Fraction(1, RATE)
        return frame


def post(url, body, headers, method="POST"):
    req = urllib.request.Request(url, data=body, headers=headers, method=method)
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, dict(r.headers), r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read().decode()


async def main():
    base = os.environ["VOXD_URL"]
    key = os.environ["VOXD_API_KEY"]
    audio_dir = os.environ["VOXD_AUDIO_DIR"]
    question = os.environ.get("VOXD_QUESTION", os.path.join(audio_dir, "jfk.wav"))
    expected = os.environ.get("VOXD_QUESTION_TEXT") or reference(audio_dir, "jfk.wav")
    with wave.open(question, "rb") as w:
        assert w.getframerate() == RATE and w.getnchannels() == 1, "16 kHz mono WAV"
        pcm = w.readframes(w.getnframes())

    pc = RTCPeerConnection()
    events = []
    opened = asyncio.Event()
    channel = pc.createDataChannel("oai-events")
    channel.on("open", lambda: opened.set())
    channel.on("message", lambda m: events.append(json.loads(m)))
    pc.addTrack(Microphone(pcm, silence_s=20))
    codec = os.environ.get("VOXD_CODEC")
    if codec:
        only = [c for c in RTCRtpSender.getCapabilities("audio").codecs if c.mimeType.lower() == f"audio/{codec.lower()}"]
        assert only, codec
        for t in pc.getTransceivers():
            t.setCodecPreferences(only)
    heard = bytearray()
    heard_rate = [48000]

    @pc.on("track")
    def on_track(track):
        async def read():
            while True:
                try:
                    frame = await track.recv()
                except Exception:
                    return
                # s16, interleaved: keep the first channel.
                channels = len(frame.layout.channels)
                heard_rate[0] = frame.sample_rate
                data = bytes(frame.planes[0])[: frame.samples * 2 * channels]
                for i in range(0, len(data), 2 * channels):
                    heard.extend(data[i : i + 2])

        asyncio.ensure_future(read())

    await pc.setLocalDescription(await pc.createOffer())
    status, headers, answer = await asyncio.to_thread(
        post,
        f"{base}/v1/realtime/calls",
        pc.localDescription.sdp.encode(),
        {"Authorization": f"Bearer {key}", "Content-Type": "application/sdp"},
    )
    assert status == 201, (status, answer)
    location = headers.get("Location") or headers.get("location")
    assert location and location.startswith("/v1/realtime/calls/"), headers
    assert answer.startswith("v="), answer
    if codec:
        # The answer carries the one codec offered, at 8 kHz.
        rtpmaps = [l for l in answer.splitlines() if l.startswith("a=rtpmap:")]
        assert rtpmaps and all(f"{codec.upper()}/8000" in l for l in rtpmaps), rtpmaps
    await pc.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))
    await asyncio.wait_for(opened.wait(), 20)

    def seen(kind):
        return [e for e in events if e.get("type") == kind]

    deadline = time.monotonic() + 150
    while time.monotonic() < deadline:
        done = [e for e in seen("response.done") if e["response"]["status"] in ("completed", "incomplete")]
        if done and seen("output_audio_buffer.stopped"):
            break
        await asyncio.sleep(0.2)
    kinds = [e.get("type") for e in events]
    if os.environ.get("VOXD_VANISH"):
        # Gone without a word: no hang-up, no DTLS close, no more packets.
        print("ok: vanished", flush=True)
        os._exit(0)
    assert kinds[0] == "session.created", kinds[:5]
    assert not seen("error"), seen("error")
    assert not seen("response.output_audio.delta"), "audio went over the data channel"
    transcript = " ".join(e["transcript"] for e in seen("conversation.item.input_audio_transcription.completed"))
    score = wer(expected, transcript)
    assert score <= 0.25, (score, transcript)
    assert seen("output_audio_buffer.started") and seen("output_audio_buffer.stopped"), kinds
    spoken = " ".join(e["transcript"] for e in seen("response.output_audio_transcript.done"))
    assert spoken.strip(), kinds
    await asyncio.sleep(1.0)  # the last packets
    seconds = len(heard) / 2 / heard_rate[0]
    assert seconds > 1.0, f"{seconds:.2f} s of answer audio"
    name = f"webrtc-answer-{codec.lower()}.wav" if codec else "webrtc-answer.wav"
    out = os.path.join(os.environ["VOXD_ARTIFACTS"], name)
    with wave.open(out, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(heard_rate[0])
        w.writeframes(bytes(heard))

    # Hang up: the call is gone, and a second hang-up finds nothing.
    auth = {"Authorization": f"Bearer {key}"}
    status, _, _ = await asyncio.to_thread(post, base + location, None, auth, "DELETE")
    assert status == 200, status
    status, _, _ = await asyncio.to_thread(post, base + location, None, auth, "DELETE")
    assert status == 404, status
    await pc.close()
    print(f"transcript: {transcript}")
    print(f"answer: {spoken}")
    print(f"audio: {seconds:.2f} s in {out}")
    print("ok: a WebRTC call from aiortc")


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except AssertionError as e:
        print(f"FAILED: {e!r}", file=sys.stderr)
        raise
