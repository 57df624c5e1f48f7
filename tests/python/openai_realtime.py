"""The official OpenAI Python SDK (`pip install "openai[realtime]"`) against a real `voxd serve`.

Run by tests/clients.rs, which starts the server and sets VOXD_URL, VOXD_API_KEY and
VOXD_AUDIO_DIR. Only the base URL differs from talking to OpenAI: the SDK opens
ws://HOST/v1/realtime, and every event it receives must parse into its own types.
"""

import base64
import os
import sys
import wave

from openai import OpenAI
from transcripts import reference, wer


def main():
    audio_dir = os.environ["VOXD_AUDIO_DIR"]
    client = OpenAI(base_url=os.environ["VOXD_URL"] + "/v1", api_key=os.environ["VOXD_API_KEY"])
    with wave.open(os.path.join(audio_dir, "jfk.wav"), "rb") as w:
        assert w.getsampwidth() == 2 and w.getnchannels() == 1
        rate = w.getframerate()
        pcm = w.readframes(w.getnframes())
    pcm += b"\0\0" * int(rate * 2)  # a pause, so the turn ends

    seen = []
    transcripts = []
    answer = ""
    audio_bytes = 0
    done_response = None
    with client.realtime.connect(model="gpt-realtime") as conn:
        conn.session.update(
            session={
                "type": "realtime",
                # OpenAI's default, spelled out: voxd answers with its voice.
                "output_modalities": ["audio"],
                "audio": {
                    "input": {
                        "format": {"type": "audio/pcm", "rate": rate},
                        "turn_detection": {"type": "server_vad", "silence_duration_ms": 1200},
                    }
                },
            }
        )
        step = rate // 10 * 2  # 100 ms of PCM16
        for at in range(0, len(pcm), step):
            conn.input_audio_buffer.append(audio=base64.b64encode(pcm[at : at + step]).decode())
        for event in conn:
            seen.append(event.type)
            if event.type == "error":
                raise SystemExit(f"error event: {event.error}")
            if event.type == "conversation.item.input_audio_transcription.completed":
                transcripts.append(event.transcript)
            elif event.type == "response.created":
                answer = ""
                audio_bytes = 0
            elif event.type == "response.output_audio_transcript.delta":
                answer += event.delta
            elif event.type == "response.output_audio.delta":
                audio_bytes += len(base64.b64decode(event.delta))
            elif event.type == "response.output_text.delta":
                raise SystemExit("a text delta in an audio session")
            elif event.type == "response.done":
                # JFK pauses mid-sentence: if that ends a turn, its answer is cancelled when
                # the next turn starts (barge-in), and the last turn's answer completes (or is
                # cut by the token limit: `incomplete`, with the reason).
                status = event.response.status
                assert status in ("completed", "cancelled", "incomplete"), status
                if status == "incomplete":
                    assert event.response.status_details.reason == "max_output_tokens"
                if status in ("completed", "incomplete"):
                    done_response = event.response
                    break

    for needed in ("session.created", "session.updated", "input_audio_buffer.speech_started"):
        assert needed in seen, f"no {needed} in {seen}"
    assert transcripts, f"no transcript in {seen}"
    transcript = " ".join(transcripts)
    score = wer(reference(audio_dir, "jfk.wav"), transcript)
    assert score <= 0.15, f"WER {score:.2f}: {transcript}"
    assert answer.strip(), "empty answer"
    # The spoken answer: PCM16 at 24 kHz, as long as the server says, parsed by the SDK's types.
    assert audio_bytes > 24000, f"{audio_bytes} bytes of audio"
    content = done_response.output[0].content[0]
    assert content.type == "output_audio", content
    assert content.transcript == answer, (content.transcript, answer)
    print(
        f"ok: WER {score:.2f}, {len(seen)} events, transcript {transcript!r}, answer {answer[:80]!r}, "
        f"{audio_bytes / 48000:.1f} s of audio"
    )


if __name__ == "__main__":
    sys.exit(main())
