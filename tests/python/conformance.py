"""Every server event voxd emits, checked against the official openai-python types.

Run by tests/clients.rs against a real `voxd serve` (VOXD_WS_URL, VOXD_API_KEY, VOXD_AUDIO_DIR).
A scripted session over a plain WebSocket exercises the protocol: a spoken turn, a text turn, a
cancelled response, a truncate, retrieve and delete (and a delete of an unknown item), an
out-of-band response with metadata and its own input, an answer cut by max_output_tokens,
a manual commit, clear, errors, the idle timeout, and a transcription session. Each event must
validate as `openai.types.realtime.RealtimeServerEvent` (`TypeAdapter`); extra voxd fields are
allowed only where the type allows extras. The script fails on the first event that does not
validate, and at the end unless every event type voxd can emit was seen.
"""

import asyncio
import base64
import json
import os
import sys
import wave

import pydantic
import websockets
from openai.types.realtime import RealtimeServerEvent

ADAPTER = pydantic.TypeAdapter(RealtimeServerEvent)

# Every event type voxd sends (src/protocol/server.rs), except the opt-in extension
# `voxd.response.citations`, which is not part of the API.
EMITTED = {
    "session.created",
    "session.updated",
    "input_audio_buffer.speech_started",
    "input_audio_buffer.speech_stopped",
    "input_audio_buffer.committed",
    "input_audio_buffer.cleared",
    "input_audio_buffer.timeout_triggered",
    "conversation.item.added",
    "conversation.item.done",
    "conversation.item.retrieved",
    "conversation.item.deleted",
    "conversation.item.truncated",
    "conversation.item.input_audio_transcription.delta",
    "conversation.item.input_audio_transcription.completed",
    "response.created",
    "response.output_item.added",
    "response.content_part.added",
    "response.output_text.delta",
    "response.output_text.done",
    "response.output_audio.delta",
    "response.output_audio.done",
    "response.output_audio_transcript.delta",
    "response.output_audio_transcript.done",
    "response.content_part.done",
    "response.output_item.done",
    "response.function_call_arguments.delta",
    "response.function_call_arguments.done",
    "response.done",
    "error",
}

LOOKUP = {
    "type": "function",
    "name": "stock_level",
    "description": "How many bikes of a model the shop has.",
    "parameters": {
        "type": "object",
        "properties": {"model": {"type": "string", "enum": ["ridgeline", "city"]}},
        "required": ["model"],
        "additionalProperties": False,
    },
}


class Session:
    def __init__(self, ws):
        self.ws = ws
        self.seen = {}
        self.events = []

    async def send(self, event):
        await self.ws.send(json.dumps(event))

    async def next(self, timeout=240):
        raw = await asyncio.wait_for(self.ws.recv(), timeout)
        event = json.loads(raw)
        try:
            parsed = ADAPTER.validate_python(event)
        except pydantic.ValidationError as e:
            raise SystemExit(f"{event.get('type')} does not validate:\n{e}\n{json.dumps(event)[:2000]}")
        assert parsed.type == event["type"], (parsed.type, event["type"])
        self.seen[event["type"]] = self.seen.get(event["type"], 0) + 1
        self.events.append(event)
        return event

    async def until(self, kind, check=None, timeout=240):
        """Events up to and including the first of type `kind` (that passes `check`)."""
        got = []
        while True:
            e = await self.next(timeout)
            got.append(e)
            if e["type"] == kind and (check is None or check(e)):
                return got

    async def error(self, code):
        events = await self.until("error")
        assert events[-1]["error"]["code"] == code, events[-1]
        return events[-1]


def pcm16(path):
    with wave.open(path, "rb") as w:
        assert w.getsampwidth() == 2 and w.getnchannels() == 1
        return w.getframerate(), w.readframes(w.getnframes())


async def append(s, pcm, rate):
    step = rate // 10 * 2  # 100 ms
    for at in range(0, len(pcm), step):
        await s.send(
            {"type": "input_audio_buffer.append", "audio": base64.b64encode(pcm[at : at + step]).decode()}
        )


def ask(text):
    return {
        "type": "conversation.item.create",
        "item": {"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]},
    }


async def realtime(url, headers, audio_dir):
    async with websockets.connect(url, additional_headers=headers, max_size=1 << 24) as ws:
        s = Session(ws)
        created = await s.next()
        assert created["type"] == "session.created"
        rate, jfk = pcm16(os.path.join(audio_dir, "jfk.wav"))
        await s.send(
            {
                "type": "session.update",
                "session": {
                    "type": "realtime",
                    "instructions": "You are the assistant of a bicycle shop. Answer in one short sentence.",
                    "audio": {
                        "input": {
                            "format": {"type": "audio/pcm", "rate": rate},
                            "turn_detection": {"type": "server_vad", "silence_duration_ms": 1200},
                            "noise_reduction": {"type": "near_field"},
                        }
                    },
                },
            }
        )
        updated = (await s.until("session.updated"))[-1]["session"]
        ignored = [i["param"] for i in updated["voxd"]["ignored"]]
        assert ignored == ["session.audio.input.noise_reduction"], ignored

        # 1. A spoken turn, answered by itself (server VAD).
        await append(s, jfk + b"\0\0" * rate * 2, rate)
        turn = await s.until("response.done")
        kinds = [e["type"] for e in turn]
        for k in ("input_audio_buffer.speech_started", "input_audio_buffer.committed",
                  "conversation.item.input_audio_transcription.completed", "response.done"):
            assert k in kinds, (k, kinds)
        completed = next(e for e in turn if e["type"].endswith("transcription.completed"))
        assert completed["usage"]["type"] == "duration" and completed["usage"]["seconds"] > 10
        spoken_item = completed["item_id"]
        # The answer is spoken (the default): audio deltas, and its transcript.
        spoken_answer = turn[-1]["response"]
        assert spoken_answer["output_modalities"] == ["audio"], spoken_answer
        assert spoken_answer["output"][0]["content"][0]["type"] == "output_audio", spoken_answer
        assert "response.output_audio.delta" in kinds, kinds
        spoken_answer_item = spoken_answer["output"][0]["id"]

        # 2. A text turn, answered in text on request.
        await s.send(ask("Where is the shop?"))
        await s.send({"type": "response.create", "response": {"output_modalities": ["text"]}})
        text_turn = await s.until("response.done")
        answer = text_turn[-1]["response"]
        assert answer["status"] == "completed", answer
        answer_item = answer["output"][0]["id"]
        part = next(e for e in text_turn if e["type"] == "response.content_part.added")["part"]
        assert part["type"] == "text", part

        # 2b. A function call, its output, and the answer that uses it.
        await s.send({"type": "session.update", "session": {"tools": [LOOKUP]}})
        tools = (await s.until("session.updated"))[-1]["session"]["tools"]
        assert [t["name"] for t in tools] == ["stock_level"], tools
        await s.send(ask("How many Ridgeline bikes do you have?"))
        await s.send(
            {"type": "response.create", "response": {"tool_choice": {"type": "function", "name": "stock_level"}}}
        )
        call_turn = await s.until("response.done")
        call = call_turn[-1]["response"]["output"][0]
        assert call["type"] == "function_call" and call["name"] == "stock_level", call
        assert json.loads(call["arguments"])["model"] in ("ridgeline", "city"), call
        await s.send(
            {"type": "conversation.item.create",
             "item": {"type": "function_call_output", "call_id": call["call_id"], "output": '{"in_stock": 3}'}}
        )
        await s.until("conversation.item.done")
        await s.send({"type": "response.create", "response": {"tool_choice": "none", "output_modalities": ["text"]}})
        after = (await s.until("response.done"))[-1]["response"]
        assert after["output"][0]["type"] == "message", after
        await s.send({"type": "session.update", "session": {"tools": []}})
        await s.until("session.updated")

        # 3. A cancelled response.
        await s.send(ask("Please write a long story about a bicycle trip along the coast."))
        await s.send({"type": "response.create"})
        await s.until("response.created")
        await s.send({"type": "response.cancel"})
        done = (await s.until("response.done"))[-1]["response"]
        assert done["status"] == "cancelled", done

        # 4. Truncate what was heard of the spoken answer.
        await s.send({"type": "conversation.item.truncate", "item_id": spoken_answer_item, "content_index": 0, "audio_end_ms": 800})
        await s.until("conversation.item.truncated")
        assert answer_item

        # 5. Retrieve and delete; a delete of an unknown item is a typed error.
        await s.send({"type": "conversation.item.retrieve", "item_id": spoken_item})
        item = (await s.until("conversation.item.retrieved"))[-1]["item"]
        assert item["id"] == spoken_item and item["content"][0]["type"] == "input_audio", item
        assert "fellow americans" in item["content"][0]["transcript"].lower(), item
        await s.send({"type": "conversation.item.delete", "item_id": spoken_item})
        deleted = (await s.until("conversation.item.deleted"))[-1]
        assert deleted["item_id"] == spoken_item
        await s.send({"type": "conversation.item.delete", "item_id": "item_nope", "event_id": "del1"})
        err = await s.error("item_delete_invalid_item_id")
        assert err["error"]["event_id"] == "del1"
        await s.send({"type": "conversation.item.retrieve", "item_id": spoken_item})
        await s.error("item_retrieve_invalid_item_id")

        # 6. An out-of-band response with its own input and metadata stays out of the history.
        await s.send(
            {
                "type": "response.create",
                "response": {
                    "conversation": "none",
                    "metadata": {"purpose": "classification"},
                    "input": [{"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Say yes."}]}],
                },
            }
        )
        oob = await s.until("response.done")
        r = oob[-1]["response"]
        assert r["conversation_id"] is None and r["metadata"] == {"purpose": "classification"}, r
        assert not any(e["type"] == "conversation.item.added" for e in oob), [e["type"] for e in oob]

        # 7. An answer cut by max_output_tokens is incomplete, and says why.
        await s.send(ask("Say something nice about bicycles."))
        await s.send({"type": "response.create", "response": {"max_output_tokens": 2}})
        r = (await s.until("response.done"))[-1]["response"]
        assert r["status"] == "incomplete", r
        assert r["status_details"]["reason"] == "max_output_tokens", r

        # 8. Manual turns: clear, an empty commit (error), a commit then a response.
        await s.send({"type": "session.update", "session": {"audio": {"input": {"turn_detection": None}}}})
        await s.until("session.updated")
        await append(s, jfk[: rate * 2], rate)
        await s.send({"type": "input_audio_buffer.clear"})
        await s.until("input_audio_buffer.cleared")
        await s.send({"type": "input_audio_buffer.commit"})
        await s.error("input_audio_buffer_commit_empty")
        await append(s, jfk, rate)
        await s.send({"type": "input_audio_buffer.commit"})
        await s.send({"type": "response.create"})
        await s.until("response.done")

        # 9. Client mistakes: typed errors, the session goes on.
        await s.send({"type": "input_audio_buffer.explode"})
        await s.error("unknown_event_type")
        await s.send({"type": "response.create", "response": {"conversation": "elsewhere"}})
        await s.error("invalid_response_config")

        # 10. The idle timeout: nobody speaks, the server commits and asks.
        await s.send(
            {"type": "session.update", "session": {"audio": {"input": {"turn_detection": {"type": "server_vad", "idle_timeout_ms": 1000}}}}}
        )
        await s.until("session.updated")
        await append(s, b"\0\0" * rate * 3, rate)
        idle = await s.until("response.done")
        assert any(e["type"] == "input_audio_buffer.timeout_triggered" for e in idle), [e["type"] for e in idle]
        nudge = idle[-1]["response"]
        assert nudge["status"] in ("completed", "incomplete"), nudge
        content = nudge["output"][0]["content"][0]
        assert (content.get("transcript") or content.get("text") or "").strip(), nudge
        return s.seen


async def transcription(url, headers, audio_dir):
    async with websockets.connect(url + "?intent=transcription", additional_headers=headers) as ws:
        s = Session(ws)
        await s.next()
        rate, pcm = pcm16(os.path.join(audio_dir, "jfk.wav"))
        await s.send(
            {
                "type": "session.update",
                "session": {
                    "type": "transcription",
                    "audio": {"input": {"format": {"type": "audio/pcm", "rate": rate}, "turn_detection": {"type": "server_vad", "silence_duration_ms": 1200}}},
                },
            }
        )
        view = (await s.until("session.updated"))[-1]["session"]
        assert view["type"] == "transcription" and "instructions" not in view, view
        await append(s, pcm + b"\0\0" * rate * 2, rate)
        await s.until("conversation.item.input_audio_transcription.completed")
        return s.seen


async def main():
    url = os.environ["VOXD_WS_URL"]
    headers = {"Authorization": f"Bearer {os.environ['VOXD_API_KEY']}"}
    audio_dir = os.environ["VOXD_AUDIO_DIR"]
    seen = await realtime(url, headers, audio_dir)
    for k, n in (await transcription(url, headers, audio_dir)).items():
        seen[k] = seen.get(k, 0) + n
    missing = EMITTED - set(seen)
    unexpected = set(seen) - EMITTED
    assert not missing, f"never seen: {sorted(missing)}"
    assert not unexpected, f"not in the list: {sorted(unexpected)}"
    total = sum(seen.values())
    print(f"ok: {total} server events of {len(seen)} types, all valid RealtimeServerEvent")


if __name__ == "__main__":
    asyncio.run(main())
