"""The OpenAI Agents SDK (`pip install openai-agents`) driving a real `voxd serve`.

A second agent has a `@function_tool`: with `tool_choice: "required"` the embedded model calls
it (its arguments written under the tool's schema), the SDK runs it and sends the result, and
the agent answers from it.

Run by tests/clients.rs, which starts the server and sets VOXD_WS_URL, VOXD_API_KEY and
VOXD_AUDIO_DIR. A `RealtimeAgent` runs under a `RealtimeRunner` over the SDK's WebSocket
transport, pointed at voxd: it completes a spoken turn (JFK's speech, streamed as the SDK
sends audio) and a text turn. The SDK must report no error and no server event that failed its
validation (it validates every event against the official types and reports failures as
`error` events and in its log).
"""

import asyncio
import logging
import os
import sys
import wave

from agents import function_tool
from agents.realtime import RealtimeAgent, RealtimeRunner
from transcripts import reference, wer


class Failures(logging.Handler):
    """Collects the SDK's warnings and errors (a failed validation is logged there)."""

    def __init__(self):
        super().__init__(level=logging.WARNING)
        self.records = []

    def emit(self, record):
        self.records.append(self.format(record))


def pcm24k(path):
    """PCM16 mono at 24 kHz (the SDK's default input format), resampled linearly."""
    with wave.open(path, "rb") as w:
        assert w.getsampwidth() == 2 and w.getnchannels() == 1
        rate, raw = w.getframerate(), w.readframes(w.getnframes())
    samples = [int.from_bytes(raw[i : i + 2], "little", signed=True) for i in range(0, len(raw), 2)]
    n = len(samples) * 24000 // rate
    out = bytearray()
    for k in range(n):
        x = k * rate / 24000
        i = int(x)
        a, b = samples[min(i, len(samples) - 1)], samples[min(i + 1, len(samples) - 1)]
        out += int(a + (b - a) * (x - i)).to_bytes(2, "little", signed=True)
    return bytes(out)


async def next_turn(session, log, timeout=240):
    """Reads session events until the agent's turn ends; returns (transcripts, answer text,
    bytes of the agent's audio)."""
    transcripts, answer, audio = [], "", 0

    async def read():
        nonlocal answer, audio
        async for event in session:
            log.append(event.type)
            if event.type == "error":
                raise SystemExit(f"the SDK reported an error: {event.error}")
            if event.type == "raw_model_event":
                data = event.data
                if data.type == "error":
                    raise SystemExit(f"model error: {data.error}")
                if data.type == "input_audio_transcription_completed":
                    transcripts.append(data.transcript)
                if data.type == "transcript_delta" or data.type == "output_text_delta":
                    answer += data.delta
            if event.type == "audio":
                audio += len(event.audio.data)
            if event.type == "agent_end":
                return

    await asyncio.wait_for(read(), timeout)
    return transcripts, answer, audio


CALLS = []


@function_tool
def stock_level(model: str) -> str:
    """How many bikes of a model (ridgeline or city) the shop has in stock."""
    CALLS.append(model)
    return f"There are 3 {model} bikes in stock."


async def tool_turn(url, api_key, failures):
    """A turn where the agent must call its tool, then answers from the result."""
    agent = RealtimeAgent(
        name="Stock",
        instructions="You are the assistant of a bicycle shop. Use your tool, then answer in one short sentence.",
        tools=[stock_level],
    )
    runner = RealtimeRunner(
        starting_agent=agent,
        config={"model_settings": {"model_name": "gpt-realtime", "tool_choice": "required",
                                   "output_modalities": ["text"]}},
    )
    session = await runner.run(model_config={"url": url, "api_key": api_key})
    seen, answer, output = [], "", None

    async def read():
        nonlocal answer, output
        async for event in session:
            seen.append(event.type)
            if event.type == "error":
                raise SystemExit(f"the SDK reported an error: {event.error}")
            if event.type == "tool_end":
                output = event.output
            if event.type == "raw_model_event" and event.data.type in ("transcript_delta", "output_text_delta"):
                answer += event.data.delta
            if event.type == "agent_end" and output is not None and answer.strip():
                return

    async with session:
        await session.send_message("How many Ridgeline bikes do you have?")
        try:
            await asyncio.wait_for(read(), 240)
        except BaseException:
            print("events seen:", seen, "output:", output, "answer:", answer)
            raise
    print(f"tool turn: called stock_level{tuple(CALLS)}, answered {answer!r}")
    assert "tool_start" in seen and CALLS, seen
    assert output and "in stock" in output, output
    assert answer.strip(), "no answer after the tool's result"


async def main():
    audio_dir = os.environ["VOXD_AUDIO_DIR"]
    failures = Failures()
    logging.getLogger("openai.agents").addHandler(failures)
    logging.getLogger("openai.agents").setLevel(logging.WARNING)

    agent = RealtimeAgent(
        name="Assistant",
        instructions="You are the helpful assistant of a bicycle shop. Answer in one short sentence.",
    )
    runner = RealtimeRunner(
        starting_agent=agent,
        config={
            "model_settings": {
                "model_name": "gpt-realtime",
                "turn_detection": {"type": "server_vad", "silence_duration_ms": 1200},
            }
        },
    )
    session = await runner.run(
        model_config={"url": os.environ["VOXD_WS_URL"], "api_key": os.environ["VOXD_API_KEY"]}
    )
    log = []
    async with session:
        # A spoken turn: JFK, then a pause so the server's VAD ends the turn.
        pcm = pcm24k(os.path.join(audio_dir, "jfk.wav")) + b"\0\0" * 24000 * 2
        step = 4800  # 100 ms
        for at in range(0, len(pcm), step):
            await session.send_audio(pcm[at : at + step])
        transcripts, answer, audio = await next_turn(session, log)
        heard = " ".join(transcripts)
        score = wer(reference(audio_dir, "jfk.wav"), heard)
        print(f"spoken turn: heard {heard!r} (WER {score:.2f}), answered {answer!r} ({audio} bytes of audio)")
        assert score <= 0.2, heard
        assert answer.strip(), "the spoken turn got no answer"
        # The agent speaks (the SDK's default): its audio events carry voxd's voice.
        assert audio > 24000, f"only {audio} bytes of the agent's audio"

        # A text turn.
        await session.send_message("Where is the shop?")
        _, answer, _ = await next_turn(session, log)
        print(f"text turn: answered {answer!r}")
        assert answer.strip(), "the text turn got no answer"

        history = [
            (i.role, i.type) for i in session._history if getattr(i, "type", None) == "message"
        ]
        print(f"history: {history}")
        assert ("user", "message") in history and ("assistant", "message") in history, history

    await tool_turn(os.environ["VOXD_WS_URL"], os.environ["VOXD_API_KEY"], failures)

    bad = [r for r in failures.records if "validat" in r.lower() or "error" in r.lower()]
    if bad:
        raise SystemExit("the SDK logged problems:\n" + "\n".join(bad))
    print(f"ok: {len(log)} session events, {len(failures.records)} SDK warnings")


if __name__ == "__main__":
    asyncio.run(main())
