#!/usr/bin/env python3
"""Reference Smart Turn features, computed by the reference implementation itself.

Loads `_whisper_features.py` from the pipecat-ai 1.14.0 wheel (the code Smart Turn v3 ships with,
BSD-2-Clause, derived from transformers' WhisperFeatureExtractor) and prepares the input exactly as
its `LocalSmartTurnAnalyzerV3` does (last 8 s, left-padded with zeros). voxd's own features
(src/vad/features.rs) are compared with these values in a unit test.

Run once (the output is committed as tests/data/turns/smart_turn_features_reference.json):
    python3 -m venv /tmp/refenv && /tmp/refenv/bin/pip install numpy
    python3 -m pip download --no-deps pipecat-ai==1.14.0 -d /tmp/pc && cd /tmp/pc && unzip -q *.whl
    /tmp/refenv/bin/python scripts/reference/smart_turn_features.py \
        /tmp/pc/pipecat/audio/turn/smart_turn/_whisper_features.py \
        > tests/data/turns/smart_turn_features_reference.json
"""
import importlib.util
import json
import sys

import numpy as np

spec = importlib.util.spec_from_file_location("whisper_features", sys.argv[1])
wf = importlib.util.module_from_spec(spec)
spec.loader.exec_module(wf)

RATE = 16000
WINDOW = 8 * RATE


def signal(samples):
    """The same deterministic mix as the Rust test builds (float64 math, then float32)."""
    t = np.arange(samples, dtype=np.float64) / RATE
    x = (
        0.3 * np.sin(2 * np.pi * 220.0 * t)
        + 0.2 * np.sin(2 * np.pi * (440.0 + 300.0 * t) * t)
        + 0.05 * np.sin(2 * np.pi * 3100.0 * t)
    )
    return x.astype(np.float32)


def prepare(audio):
    """LocalSmartTurnAnalyzerV3: keep the last 8 s, or pad with zeros at the beginning."""
    if len(audio) > WINDOW:
        return audio[-WINDOW:]
    return np.pad(audio, (WINDOW - len(audio), 0), mode="constant")


rng = np.random.default_rng(7)
cases = []
for name, samples in [("3 s, left-padded", 3 * RATE), ("8 s", WINDOW), ("10 s, last 8 kept", 10 * RATE)]:
    f = wf.compute_whisper_log_mel_features(prepare(signal(samples)), do_normalize=True)
    assert f.shape == (80, 800)
    picks = [(int(m), int(t)) for m, t in zip(rng.integers(0, 80, 300), rng.integers(0, 800, 300))]
    # The edges of the padding and of the window matter most: pick those frames too.
    picks += [(m, t) for m in (0, 1, 40, 79) for t in (0, 1, 499, 500, 501, 798, 799)]
    cases.append(
        {
            "name": name,
            "samples": samples,
            "values": [(m, t, float(f[m, t])) for m, t in picks],
            "mean": float(f.astype(np.float64).mean()),
            "max": float(f.max()),
            "min": float(f.min()),
        }
    )
json.dump({"source": "pipecat-ai 1.14.0 _whisper_features.py", "cases": cases}, sys.stdout)
print()
