"""Validates server events (one JSON object a line on stdin) against the official openai-python
types (`openai.types.realtime.RealtimeServerEvent`); exits 1 naming each that does not validate.

Used by tests whose sessions the Rust test drives (tests/mcp_realtime.rs), so events it cannot
script from Python are checked too.
"""

import json
import sys

import pydantic
from openai.types.realtime import RealtimeServerEvent

ADAPTER = pydantic.TypeAdapter(RealtimeServerEvent)

bad = 0
kinds = set()
for line in sys.stdin:
    if not line.strip():
        continue
    event = json.loads(line)
    kinds.add(event.get("type"))
    try:
        ADAPTER.validate_python(event)
    except pydantic.ValidationError as e:
        bad += 1
        print(f"{event.get('type')}: {str(e)[:1500]}\n{json.dumps(event)[:2000]}")
print(f"{len(kinds)} event types checked: {', '.join(sorted(kinds))}")
sys.exit(1 if bad else 0)
