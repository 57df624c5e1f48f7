"""Transcript helpers shared by the SDK scripts: word error rate (case and punctuation
normalised) and the reference transcripts of the test audio."""

import os
import re


def words(text):
    text = re.sub(r"[^\w']+", " ", text.lower())
    return [w.strip("'") for w in text.split() if w.strip("'")]


def wer(reference, hypothesis):
    r, h = words(reference), words(hypothesis)
    prev = list(range(len(h) + 1))
    for i in range(1, len(r) + 1):
        cur = [i]
        for j in range(1, len(h) + 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (r[i - 1] != h[j - 1])))
        prev = cur
    return prev[-1] / max(1, len(r))


def reference(audio_dir, name):
    with open(os.path.join(audio_dir, "transcripts.tsv"), encoding="utf-8") as f:
        for line in f:
            cols = line.rstrip("\n").split("\t")
            if cols[0] == name:
                return cols[2]
    raise SystemExit(f"no reference for {name}")
