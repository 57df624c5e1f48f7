//! Converting a CTranslate2 Whisper model (faster-whisper's format) to whisper.cpp's ggml file.
//!
//! The mapping follows OpenAI's checkpoint names, which whisper.cpp expects. CTranslate2 fuses
//! some projections: self-attention `linear_0` holds q, k and v stacked along the output rows
//! (whisper has no key bias, so that third of the bias is dropped), and cross-attention
//! `linear_1` holds k and v. One-dimensional tensors, the conv biases (as `[d, 1]`) and both
//! positional embeddings are stored as f32, matrices as f16, as whisper.cpp's own converter does.
//!
//! With [`Weights::Q8_0`] the matrices whisper.cpp creates in the model's weight type (every
//! attention and MLP matrix, and the decoder's token embedding) are written as GGML Q8_0 blocks
//! instead, as whisper.cpp's `quantize` tool would: half the memory of f16. The conv kernels stay
//! f16 (whisper.cpp keeps them 16-bit in every quantised model) and everything else f32.

use std::fs::File;
use std::io::BufWriter;
use std::path::Path;

use half::f16;
use tracing::info;

use super::ct2::{Ct2Model, DType};
use super::ggml::{Data, WhisperHparams, Writer};
use super::{progress, ModelError};

/// How the big matrices are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Weights {
    F16,
    Q8_0,
}

impl Weights {
    /// The ggml file type whisper.cpp reads from the header (GGML_FTYPE_MOSTLY_*, with the
    /// quantisation version × 1000 for a quantised file, as ggml's tools write it).
    fn ftype(self) -> i32 {
        match self {
            Weights::F16 => 1,
            Weights::Q8_0 => 7 + 2 * 1000,
        }
    }
}

/// Converts `model.bin` + `vocabulary.txt` in `src_dir` into the ggml file `dest`.
/// Writes to a temporary name first, so an interrupted conversion leaves no half file at `dest`.
pub fn convert(
    src_dir: &Path,
    dest: &Path,
    weights: Weights,
    label: &str,
    quiet: bool,
) -> Result<(), ModelError> {
    let model_path = src_dir.join("model.bin");
    let model = Ct2Model::open(&model_path)?;
    if model.spec != "WhisperSpec" {
        return Err(ModelError::Corrupt {
            path: model_path,
            reason: format!("model spec is {}, expected WhisperSpec", model.spec),
        });
    }
    let vocab_path = src_dir.join("vocabulary.txt");
    let vocab_text =
        std::fs::read_to_string(&vocab_path).map_err(|e| ModelError::io(&vocab_path, e))?;
    let vocab = byte_level_vocab(&vocab_text).map_err(|reason| ModelError::Corrupt {
        path: vocab_path.clone(),
        reason,
    })?;

    let part = dest.with_extension("part");
    let total: u64 = std::fs::metadata(&model_path).map(|m| m.len()).unwrap_or(0);
    let bar = progress::bytes(total, "convert", label, quiet);
    let file = File::create(&part).map_err(|e| ModelError::io(&part, e))?;
    let mut w = Writer::new(BufWriter::with_capacity(1 << 20, file));
    let result = write_model(&model, &vocab, weights, &mut w, &bar).and_then(|()| w.finish());
    bar.finish();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&part);
        return Err(ModelError::io(&part, e));
    }
    std::fs::rename(&part, dest).map_err(|e| ModelError::io(dest, e))?;
    info!(model = label, path = %dest.display(), "converted CTranslate2 Whisper to ggml");
    Ok(())
}

/// The vocabulary's byte-level BPE tokens (up to `<|endoftext|>`), as raw bytes.
pub fn byte_level_vocab(text: &str) -> Result<Vec<Vec<u8>>, String> {
    let decode = unicode_to_byte_table();
    let mut out = Vec::new();
    for (i, line) in text.split('\n').enumerate() {
        if line == "<|endoftext|>" || line.is_empty() {
            break;
        }
        let bytes: Option<Vec<u8>> = line
            .chars()
            .map(|c| decode.get(c as usize).copied().flatten())
            .collect();
        out.push(
            bytes
                .ok_or_else(|| format!("line {}: `{line}` is not a byte-level BPE token", i + 1))?,
        );
    }
    if out.len() < 256 {
        return Err(format!("only {} tokens before <|endoftext|>", out.len()));
    }
    Ok(out)
}

/// GPT-2's byte-to-unicode table, inverted: index by a char's code point to get its byte.
fn unicode_to_byte_table() -> Vec<Option<u8>> {
    let mut table = vec![None; 512];
    let printable = |b: u8| (b'!'..=b'~').contains(&b) || (0xA1..=0xAC).contains(&b) || b >= 0xAE;
    let mut next = 256usize;
    for b in 0..=255u8 {
        if printable(b) {
            table[b as usize] = Some(b);
        } else {
            table[next] = Some(b);
            next += 1;
        }
    }
    table
}

/// librosa's `filters.mel(sr, n_fft, n_mels)` with the Slaney mel scale and Slaney area
/// normalisation, as whisper uses; `n_mels` rows of `n_fft / 2 + 1` values.
pub fn mel_filters(sample_rate: f64, n_fft: usize, n_mels: usize) -> Vec<f32> {
    let f_sp = 200.0 / 3.0;
    let min_log_hz = 1000.0;
    let min_log_mel = min_log_hz / f_sp;
    let logstep = (6.4f64).ln() / 27.0;
    let hz_to_mel = |f: f64| {
        if f >= min_log_hz {
            min_log_mel + (f / min_log_hz).ln() / logstep
        } else {
            f / f_sp
        }
    };
    let mel_to_hz = |m: f64| {
        if m >= min_log_mel {
            min_log_hz * (logstep * (m - min_log_mel)).exp()
        } else {
            f_sp * m
        }
    };
    let n_bins = n_fft / 2 + 1;
    let fft_freqs: Vec<f64> = (0..n_bins)
        .map(|i| i as f64 * (sample_rate / 2.0) / (n_bins - 1) as f64)
        .collect();
    let max_mel = hz_to_mel(sample_rate / 2.0);
    let mel_f: Vec<f64> = (0..n_mels + 2)
        .map(|i| mel_to_hz(max_mel * i as f64 / (n_mels + 1) as f64))
        .collect();
    let mut out = Vec::with_capacity(n_mels * n_bins);
    for m in 0..n_mels {
        let enorm = 2.0 / (mel_f[m + 2] - mel_f[m]);
        for &f in &fft_freqs {
            let lower = (f - mel_f[m]) / (mel_f[m + 1] - mel_f[m]);
            let upper = (mel_f[m + 2] - f) / (mel_f[m + 2] - mel_f[m + 1]);
            out.push((lower.min(upper).max(0.0) * enorm) as f32);
        }
    }
    out
}

fn count_layers(model: &Ct2Model, prefix: &str) -> usize {
    (0..)
        .take_while(|i| {
            let p = format!("{prefix}/layer_{i}/");
            model.names().any(|n| n.starts_with(&p))
        })
        .count()
}

struct Emitter<'a, 'b, W: std::io::Write> {
    model: &'a Ct2Model,
    weights: Weights,
    w: &'b mut Writer<W>,
    bar: &'b indicatif::ProgressBar,
}

impl<W: std::io::Write> Emitter<'_, '_, W> {
    fn f16_rows(
        &self,
        name: &str,
        rows: std::ops::Range<usize>,
    ) -> std::io::Result<(Vec<usize>, Vec<f16>)> {
        let v = self.model.require(name).map_err(std::io::Error::other)?;
        let cols: usize = v.shape.iter().skip(1).product();
        let all: Vec<f16> = match v.dtype {
            DType::F16 => self
                .model
                .bytes(v)
                .chunks_exact(2)
                .map(|c| f16::from_le_bytes([c[0], c[1]]))
                .collect(),
            _ => self
                .model
                .to_f32(name)
                .map_err(std::io::Error::other)?
                .into_iter()
                .map(f16::from_f32)
                .collect(),
        };
        let mut shape = v.shape.clone();
        shape[0] = rows.len();
        Ok((shape, all[rows.start * cols..rows.end * cols].to_vec()))
    }

    fn rows_of(&self, name: &str) -> std::io::Result<usize> {
        Ok(self
            .model
            .require(name)
            .map_err(std::io::Error::other)?
            .shape[0])
    }

    /// A matrix (or conv kernel), optionally a slice of its rows, as f16.
    fn matrix(
        &mut self,
        src: &str,
        dst: &str,
        rows: Option<std::ops::Range<usize>>,
    ) -> std::io::Result<()> {
        let rows = match rows {
            Some(r) => r,
            None => 0..self.rows_of(src)?,
        };
        let (shape, data) = self.f16_rows(src, rows)?;
        self.w.tensor(dst, &shape, Data::F16(&data))?;
        self.bar.inc(data.len() as u64 * 2);
        Ok(())
    }

    /// A matrix in the model's weight type: f16, or Q8_0 blocks of each row.
    fn weight(
        &mut self,
        src: &str,
        dst: &str,
        rows: Option<std::ops::Range<usize>>,
    ) -> std::io::Result<()> {
        if self.weights == Weights::F16 {
            return self.matrix(src, dst, rows);
        }
        let rows = match rows {
            Some(r) => r,
            None => 0..self.rows_of(src)?,
        };
        let (shape, data) = self.f16_rows(src, rows)?;
        let values: Vec<f32> = data.iter().map(|v| v.to_f32()).collect();
        let cols = *shape.last().unwrap_or(&0);
        if cols % voxd_q8::BLOCK != 0 {
            return Err(std::io::Error::other(format!(
                "{src}: rows of {cols} values cannot be stored as Q8_0 blocks of {}",
                voxd_q8::BLOCK
            )));
        }
        let mut blocks = vec![
            voxd_q8::Block {
                d: 0,
                qs: [0; voxd_q8::BLOCK]
            };
            values.len() / voxd_q8::BLOCK
        ];
        voxd_q8::quantize(&values, &mut blocks);
        self.w.tensor(dst, &shape, Data::Q8_0(&blocks))?;
        self.bar.inc(data.len() as u64 * 2);
        Ok(())
    }

    /// A vector or embedding table as f32, optionally a slice of its rows, in the given shape.
    fn f32(
        &mut self,
        src: &str,
        dst: &str,
        rows: Option<std::ops::Range<usize>>,
        shape: Option<Vec<usize>>,
    ) -> std::io::Result<()> {
        let v = self.model.require(src).map_err(std::io::Error::other)?;
        let cols: usize = v.shape.iter().skip(1).product();
        let mut data = self.model.to_f32(src).map_err(std::io::Error::other)?;
        let mut out_shape = v.shape.clone();
        if let Some(r) = rows {
            data = data[r.start * cols..r.end * cols].to_vec();
            out_shape[0] = r.len();
        }
        let out_shape = shape.unwrap_or(out_shape);
        self.w.tensor(dst, &out_shape, Data::F32(&data))?;
        self.bar.inc(data.len() as u64 * 2);
        Ok(())
    }

    fn layer_norm(&mut self, src: &str, dst: &str) -> std::io::Result<()> {
        self.f32(
            &format!("{src}/gamma"),
            &format!("{dst}.weight"),
            None,
            None,
        )?;
        self.f32(&format!("{src}/beta"), &format!("{dst}.bias"), None, None)
    }

    fn linear(
        &mut self,
        src: &str,
        dst: &str,
        rows: Option<std::ops::Range<usize>>,
        bias: bool,
    ) -> std::io::Result<()> {
        self.weight(
            &format!("{src}/weight"),
            &format!("{dst}.weight"),
            rows.clone(),
        )?;
        if bias {
            self.f32(&format!("{src}/bias"), &format!("{dst}.bias"), rows, None)?;
        }
        Ok(())
    }

    fn ffn(&mut self, src: &str, dst: &str) -> std::io::Result<()> {
        self.layer_norm(&format!("{src}/ffn/layer_norm"), &format!("{dst}.mlp_ln"))?;
        self.linear(
            &format!("{src}/ffn/linear_0"),
            &format!("{dst}.mlp.0"),
            None,
            true,
        )?;
        self.linear(
            &format!("{src}/ffn/linear_1"),
            &format!("{dst}.mlp.2"),
            None,
            true,
        )
    }

    fn self_attention(&mut self, src: &str, dst: &str, d: usize) -> std::io::Result<()> {
        let s = format!("{src}/self_attention");
        self.layer_norm(&format!("{s}/layer_norm"), &format!("{dst}.attn_ln"))?;
        self.linear(
            &format!("{s}/linear_0"),
            &format!("{dst}.attn.query"),
            Some(0..d),
            true,
        )?;
        self.linear(
            &format!("{s}/linear_0"),
            &format!("{dst}.attn.key"),
            Some(d..2 * d),
            false,
        )?;
        self.linear(
            &format!("{s}/linear_0"),
            &format!("{dst}.attn.value"),
            Some(2 * d..3 * d),
            true,
        )?;
        self.linear(
            &format!("{s}/linear_1"),
            &format!("{dst}.attn.out"),
            None,
            true,
        )
    }

    fn cross_attention(&mut self, src: &str, dst: &str, d: usize) -> std::io::Result<()> {
        let s = format!("{src}/attention");
        self.layer_norm(&format!("{s}/layer_norm"), &format!("{dst}.cross_attn_ln"))?;
        self.linear(
            &format!("{s}/linear_0"),
            &format!("{dst}.cross_attn.query"),
            None,
            true,
        )?;
        self.linear(
            &format!("{s}/linear_1"),
            &format!("{dst}.cross_attn.key"),
            Some(0..d),
            false,
        )?;
        self.linear(
            &format!("{s}/linear_1"),
            &format!("{dst}.cross_attn.value"),
            Some(d..2 * d),
            true,
        )?;
        self.linear(
            &format!("{s}/linear_2"),
            &format!("{dst}.cross_attn.out"),
            None,
            true,
        )
    }
}

/// Derives the hyper-parameters from the CTranslate2 variables.
pub fn hparams(model: &Ct2Model) -> Result<WhisperHparams, ModelError> {
    let conv1 = model.require("encoder/conv1/weight")?;
    let emb = model.require("decoder/embeddings/weight")?;
    let enc_pos = model.require("encoder/position_encodings/encodings")?;
    let dec_pos = model.require("decoder/position_encodings/encodings")?;
    let d = |v: usize| v as i32;
    Ok(WhisperHparams {
        n_vocab: d(emb.shape[0]),
        n_audio_ctx: d(enc_pos.shape[0]),
        n_audio_state: d(conv1.shape[0]),
        n_audio_head: model.scalar_int("encoder/num_heads")? as i32,
        n_audio_layer: d(count_layers(model, "encoder")),
        n_text_ctx: d(dec_pos.shape[0]),
        n_text_state: d(emb.shape[1]),
        n_text_head: model.scalar_int("decoder/num_heads")? as i32,
        n_text_layer: d(count_layers(model, "decoder")),
        n_mels: d(conv1.shape[1]),
        ftype: 1,
    })
}

fn write_model<W: std::io::Write>(
    model: &Ct2Model,
    vocab: &[Vec<u8>],
    weights: Weights,
    w: &mut Writer<W>,
    bar: &indicatif::ProgressBar,
) -> std::io::Result<()> {
    let hp = WhisperHparams {
        ftype: weights.ftype(),
        ..hparams(model).map_err(std::io::Error::other)?
    };
    w.header(&hp)?;
    let n_fft = 400;
    w.mel_filters(
        hp.n_mels as usize,
        n_fft / 2 + 1,
        &mel_filters(16000.0, n_fft, hp.n_mels as usize),
    )?;
    w.vocab(vocab)?;

    let d_audio = hp.n_audio_state as usize;
    let d_text = hp.n_text_state as usize;
    let mut e = Emitter {
        model,
        weights,
        w,
        bar,
    };
    e.f32(
        "encoder/position_encodings/encodings",
        "encoder.positional_embedding",
        None,
        None,
    )?;
    e.matrix("encoder/conv1/weight", "encoder.conv1.weight", None)?;
    e.f32(
        "encoder/conv1/bias",
        "encoder.conv1.bias",
        None,
        Some(vec![d_audio, 1]),
    )?;
    e.matrix("encoder/conv2/weight", "encoder.conv2.weight", None)?;
    e.f32(
        "encoder/conv2/bias",
        "encoder.conv2.bias",
        None,
        Some(vec![d_audio, 1]),
    )?;
    for i in 0..hp.n_audio_layer as usize {
        let (src, dst) = (format!("encoder/layer_{i}"), format!("encoder.blocks.{i}"));
        e.self_attention(&src, &dst, d_audio)?;
        e.ffn(&src, &dst)?;
    }
    e.layer_norm("encoder/layer_norm", "encoder.ln_post")?;

    e.weight(
        "decoder/embeddings/weight",
        "decoder.token_embedding.weight",
        None,
    )?;
    e.f32(
        "decoder/position_encodings/encodings",
        "decoder.positional_embedding",
        None,
        None,
    )?;
    for i in 0..hp.n_text_layer as usize {
        let (src, dst) = (format!("decoder/layer_{i}"), format!("decoder.blocks.{i}"));
        e.self_attention(&src, &dst, d_text)?;
        e.cross_attention(&src, &dst, d_text)?;
        e.ffn(&src, &dst)?;
    }
    e.layer_norm("decoder/layer_norm", "decoder.ln")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_table_inverts_gpt2_mapping() {
        let t = unicode_to_byte_table();
        assert_eq!(t['!' as usize], Some(b'!'));
        // 'Ġ' (U+0120) is GPT-2's space, 'Ċ' (U+010A) its newline.
        assert_eq!(t[0x120], Some(b' '));
        assert_eq!(t[0x10A], Some(b'\n'));
        let mapped = t.iter().flatten().count();
        assert_eq!(mapped, 256, "every byte has exactly one character");
    }

    #[test]
    fn vocab_decodes_and_stops_at_endoftext() {
        let mut text: String = (0..300).map(|i| format!("t{i}\n")).collect();
        text.push_str("ĠHello\n<|endoftext|>\n<|startoftranscript|>\n");
        let v = byte_level_vocab(&text).unwrap();
        assert_eq!(v.len(), 301);
        assert_eq!(v[300], b" Hello".to_vec());
        assert!(
            byte_level_vocab("a\nb\n").is_err(),
            "too short to be a vocabulary"
        );
    }

    #[test]
    fn mel_filters_match_librosa_reference_values() {
        // Reference values computed once with librosa 0.11:
        // librosa.filters.mel(sr=16000, n_fft=400, n_mels=80) (float32).
        let f = mel_filters(16000.0, 400, 80);
        assert_eq!(f.len(), 80 * 201);
        let row = |m: usize| &f[m * 201..(m + 1) * 201];
        let argmax = |r: &[f32]| {
            r.iter()
                .enumerate()
                .max_by(|a, b| a.1.total_cmp(b.1))
                .map(|(i, v)| (i, *v))
                .unwrap()
        };
        assert!((row(0)[1] - 0.024_862_59).abs() < 1e-7, "{}", row(0)[1]);
        assert!(row(0)[0] == 0.0 && row(0)[2] == 0.0);
        let (i, v) = argmax(row(40));
        assert!(i == 43 && (v - 0.014_735_566).abs() < 1e-7, "{i} {v}");
        let (i, v) = argmax(row(79));
        assert!(i == 192 && (v - 0.003_164_711_9).abs() < 1e-8, "{i} {v}");
        let sum: f64 = f.iter().map(|&v| v as f64).sum();
        assert!((sum - 1.999_024_152_755_737_3).abs() < 1e-5, "{sum}");
        // Every filter is non-negative and non-empty.
        for m in 0..80 {
            let row = &f[m * 201..(m + 1) * 201];
            assert!(row.iter().all(|&v| v >= 0.0));
            assert!(row.iter().any(|&v| v > 0.0), "row {m} empty");
        }
    }
}
