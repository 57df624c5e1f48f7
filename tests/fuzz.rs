//! Fuzz targets (bolero, stable Rust) for everything a client's bytes reach before a model does.
//!
//! Under `cargo test` each target replays its checked-in corpus (`tests/__fuzz__/<target>/corpus`)
//! and then runs random inputs for one second. The long runs are in docs/security.md (fuzzing):
//! the same targets, run for millions of inputs with `BOLERO_RANDOM_ITERATIONS`.
//!
//! Each target asserts more than "no panic" where the code promises more: the stop scanner passes
//! on exactly the text before the first stop string, the keyword query is always valid FTS5
//! syntax for a real SQLite, chunks lie on the text's character boundaries.

use bolero::check;
use voxd::audio::{decode_bytes, decode_bytes_at, ChannelSelect, DecodeLimits};
use voxd::protocol::{parse_client_event, ClientEvent, InputFormat, SessionConfig, SessionKind};
use voxd::rag::chunk::{chunk, ChunkParams};
use voxd::rag::extract::{extract, Format};
use voxd::rag::store::SqliteStore;

/// Turns fuzzer bytes into choices.
struct Choices<'a>(&'a [u8]);

impl Choices<'_> {
    fn byte(&mut self) -> Option<u8> {
        let (&b, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(b)
    }

    fn below(&mut self, n: usize) -> Option<usize> {
        let hi = self.byte()? as usize;
        let lo = self.byte()? as usize;
        Some((hi << 8 | lo) % n.max(1))
    }
}

/// Seed events the JSON mutator starts from (the corpus of `client_events`).
const EVENT_SEEDS: &[&str] = &[
    include_str!("__fuzz__/client_events/corpus/session_update.json"),
    include_str!("__fuzz__/client_events/corpus/transcription.json"),
    include_str!("__fuzz__/client_events/corpus/beta.json"),
    include_str!("__fuzz__/client_events/corpus/response.json"),
    include_str!("__fuzz__/client_events/corpus/item.json"),
    include_str!("__fuzz__/client_events/corpus/truncate.json"),
];

/// A value to put somewhere in an event: every JSON type, edge numbers, odd strings.
fn odd_value(c: &mut Choices) -> Option<serde_json::Value> {
    use serde_json::json;
    Some(match c.byte()? % 14 {
        0 => json!(null),
        1 => json!(true),
        2 => json!(-1),
        3 => json!(0),
        4 => json!(u64::MAX),
        5 => json!(1e308),
        6 => json!(0.5),
        7 => json!(""),
        8 => json!("\u{0}nul"),
        9 => json!("x".repeat(c.below(70_000)?)),
        10 => json!([]),
        11 => json!({}),
        12 => json!("audio/pcmu"),
        _ => json!(c.below(100_000)?),
    })
}

/// Replaces one value somewhere in `v` (chosen by `c`).
fn mutate(v: &mut serde_json::Value, c: &mut Choices) -> Option<()> {
    use serde_json::Value;
    let here = c.byte()? % 4 == 0;
    match v {
        Value::Object(map) if !map.is_empty() && !here => {
            let i = c.below(map.len())?;
            let key = map.keys().nth(i)?.clone();
            if c.byte()? % 8 == 0 {
                map.remove(&key);
                Some(())
            } else {
                mutate(map.get_mut(&key)?, c)
            }
        }
        Value::Array(items) if !items.is_empty() && !here => {
            let i = c.below(items.len())?;
            mutate(&mut items[i], c)
        }
        _ => {
            *v = odd_value(c)?;
            Some(())
        }
    }
}

#[test]
fn client_events() {
    check!().for_each(|bytes: &[u8]| {
        // Half the inputs are raw text; the others a real event with a few values replaced.
        let text = match bytes.split_first() {
            Some((&b, rest)) if b % 2 == 0 => {
                let mut c = Choices(rest);
                let seed = EVENT_SEEDS[b as usize / 2 % EVENT_SEEDS.len()];
                let mut v: serde_json::Value = serde_json::from_str(seed).unwrap();
                while mutate(&mut v, &mut c).is_some() {}
                v.to_string()
            }
            _ => String::from_utf8_lossy(bytes).into_owned(),
        };
        let mut config = SessionConfig::new(SessionKind::Realtime, "voxd");
        if let Ok(msg) = parse_client_event(&text) {
            if let ClientEvent::SessionUpdate { session } = msg.event {
                if config.apply_update(&session).is_ok() {
                    // What the server sends back must serialise.
                    serde_json::to_string(&config.to_view()).unwrap();
                }
            }
        }
    });
}

/// Real files the audio mutator starts from (the corpus of `audio_containers`).
const AUDIO_SEEDS: &[(&[u8], &str)] = &[
    (
        include_bytes!("__fuzz__/audio_containers/corpus/short.wav"),
        "wav",
    ),
    (
        include_bytes!("__fuzz__/audio_containers/corpus/stereo_float.wav"),
        "wav",
    ),
    (
        include_bytes!("__fuzz__/audio_containers/corpus/short.flac"),
        "flac",
    ),
    (
        include_bytes!("__fuzz__/audio_containers/corpus/short.ogg"),
        "ogg",
    ),
    (
        include_bytes!("__fuzz__/audio_containers/corpus/truncated.mp3"),
        "mp3",
    ),
];

/// Each container's decoder, on raw bytes and on real files with bytes overwritten, cut short
/// or grown, within a 30 s cap.
#[test]
fn audio_containers() {
    check!().for_each(|bytes: &[u8]| {
        let limits = DecodeLimits::max_seconds(30.0);
        let (data, ext) = match bytes.split_first() {
            Some((&b, rest)) if b % 4 != 0 => {
                let (seed, ext) = AUDIO_SEEDS[b as usize % AUDIO_SEEDS.len()];
                let mut data = seed.to_vec();
                let mut c = Choices(rest);
                // Overwrites weighted towards the headers, where the lengths and rates are.
                while let (Some(at), Some(value)) = (c.below(data.len()), c.byte()) {
                    let at = if value % 2 == 0 {
                        at % 256.min(data.len())
                    } else {
                        at
                    };
                    data[at] = value;
                }
                if b % 8 == 3 {
                    data.truncate(data.len() * (b as usize) / 256);
                }
                (data, Some(ext))
            }
            _ => (bytes.to_vec(), None),
        };
        // At the source's rate: the resampler after it is the same for every container, and
        // its set-up (a sinc table) would dominate the run. One input in 16 goes on to 16 kHz.
        let to_16k = bytes.first().is_some_and(|b| b % 16 == 5);
        for hint in [ext, None] {
            if to_16k {
                let d = decode_bytes_at(data.clone(), hint, ChannelSelect::Mix, 16_000, &limits);
                if let Ok(d) = d {
                    assert_eq!(d.sample_rate, 16_000);
                    assert!(d.samples.len() <= 31 * 16_000, "{}", d.samples.len());
                }
            } else if let Ok(d) = decode_bytes(data.clone(), hint, ChannelSelect::Mix, Some(30.0)) {
                assert!(d.duration_s() <= 31.0, "{} s", d.duration_s());
            }
        }
    });
}

#[test]
fn pcm_and_g711() {
    check!().for_each(|bytes: &[u8]| {
        for format in [
            InputFormat::Pcm16 { rate: 16_000 },
            InputFormat::Pcmu,
            InputFormat::Pcma,
        ] {
            match voxd::realtime::decode_audio(bytes, format) {
                Ok(samples) => {
                    let per_sample = if matches!(format, InputFormat::Pcm16 { .. }) {
                        2
                    } else {
                        1
                    };
                    assert_eq!(samples.len() * per_sample, bytes.len());
                    assert!(samples.iter().all(|s| (-1.0..=1.0).contains(s)));
                }
                Err(e) => assert_eq!(e.code, "invalid_audio_length"),
            }
        }
    });
}

/// Pieces documents are made of: markup, front matter, entities, sentence ends, odd characters.
const DOC_PIECES: &[&str] = &[
    "<h1>",
    "</h1>",
    "<h2>",
    "<p>",
    "</p>",
    "<br>",
    "<script>",
    "</script>",
    "<style>",
    "</style>",
    "<title>",
    "</title>",
    "<table><tr><td>",
    "</td></tr></table>",
    "<ul><li>",
    "</li></ul>",
    "<a href=\"javascript:x\">",
    "</a>",
    "<!--",
    "-->",
    "<![CDATA[",
    "]]>",
    "&amp;",
    "&#0;",
    "&#x1F600;",
    "&euro;",
    "&",
    "<",
    ">",
    "---\n",
    "title: ",
    "updated_at: ",
    "expires_at: ",
    "uri: ",
    "2024-02-30",
    "9999-12-31T23:59:59Z",
    "# ",
    "## ",
    "###### ",
    "```\n",
    "| a | b |\n",
    "- ",
    "1. ",
    "**",
    "_",
    "\n",
    "\n\n",
    " ",
    ". ",
    "? ",
    "word ",
    "Brightwater ",
    "\u{0}",
    "\u{200b}",
    "é",
    "日本語",
    "\u{1F600}",
    "\r\n",
    "\t",
];

/// A document built from `bytes`: each byte picks a piece (the rest of the byte values repeat
/// the previous piece), so markup nests and breaks in every way.
fn document(bytes: &[u8]) -> String {
    let mut out = String::new();
    let mut last = "";
    for &b in bytes {
        let piece = DOC_PIECES.get(b as usize).copied().unwrap_or(last);
        out.push_str(piece);
        last = piece;
    }
    out
}

#[test]
fn document_extraction() {
    check!().for_each(|bytes: &[u8]| {
        let built = document(bytes);
        for input in [bytes, built.as_bytes()] {
            for format in [Format::Text, Format::Markdown, Format::Html] {
                let _ = extract(input, format);
            }
        }
    });
}

#[test]
fn chunking() {
    check!().for_each(|bytes: &[u8]| {
        let text = match bytes.split_first() {
            Some((b, rest)) if b % 2 == 0 => document(rest),
            _ => String::from_utf8_lossy(bytes).into_owned(),
        };
        // A whitespace token count, like the embedder's but cheap.
        let count = |s: &str| s.split_whitespace().count() + 1;
        for markdown in [false, true] {
            for c in chunk(&text, markdown, ChunkParams::for_model(48, 8), &count) {
                assert!(c.start <= c.end && c.end <= text.len());
                assert!(text.is_char_boundary(c.start) && text.is_char_boundary(c.end));
            }
        }
    });
}

#[test]
fn keyword_query_in_sqlite_fts5() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("kb.sqlite")).unwrap();
    check!().for_each(|bytes: &[u8]| {
        let question = String::from_utf8_lossy(bytes);
        let query = voxd::rag::search::keyword_query(&question);
        // Whatever the question, the query is valid FTS5: MATCH never fails.
        if let Err(e) = store.keyword_search(&query, 5) {
            panic!("{query:?} from {question:?}: {e}");
        }
    });
}

#[test]
fn stop_strings() {
    check!().for_each(|bytes: &[u8]| {
        // The first byte splits the input into stop strings and streamed pieces.
        let Some((&split, rest)) = bytes.split_first() else {
            return;
        };
        let text = String::from_utf8_lossy(rest);
        let cut = text
            .char_indices()
            .map(|(i, _)| i)
            .nth(split as usize % 8)
            .unwrap_or(text.len());
        let (stops_part, stream) = text.split_at(cut);
        let stops: Vec<String> = stops_part
            .split('|')
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect();
        let mut scanner = voxd::llm::stop::StopScanner::new(&stops);
        let mut out = String::new();
        let mut stopped = false;
        let mut pieces = stream.char_indices().map(|(i, _)| i).collect::<Vec<_>>();
        pieces.push(stream.len());
        let mut from = 0;
        for (n, &to) in pieces.iter().enumerate() {
            // Pieces of 1 to 3 characters, as tokens arrive.
            if n % 3 != 2 && to != stream.len() {
                continue;
            }
            let (emitted, hit) = scanner.push(&stream[from..to]);
            out.push_str(&emitted);
            from = to;
            if hit {
                stopped = true;
                break;
            }
        }
        if !stopped {
            out.push_str(&scanner.finish());
        }
        let first_stop = stops.iter().filter_map(|s| stream.find(s.as_str())).min();
        match first_stop {
            Some(at) => {
                assert!(stopped, "{stops:?} in {stream:?}");
                assert_eq!(out, &stream[..at]);
            }
            None => assert_eq!(out, stream),
        }
    });
}
