//! all-MiniLM-L6-v2 (a 6-layer BERT) run with candle: WordPiece tokens → encoder → mean over the
//! real tokens (attention mask) → L2 normalisation → 384 floats. This is what
//! sentence-transformers computes for the model (its pooling config: mean tokens).

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::{BertModel, Config as BertConfig};
use tokenizers::{PaddingParams, PaddingStrategy, Tokenizer, TruncationParams};

use super::bert8::Bert8;
use super::EmbedError;

/// The longest input, in word pieces including `[CLS]` and `[SEP]`: sentence-transformers'
/// `max_seq_length` for this model (the shipped `tokenizer.json` says 128 and pads to 128; both
/// are overridden).
pub const MAX_TOKENS: usize = 256;

/// Texts per forward pass when embedding many (ingestion).
const BATCH: usize = 16;

/// The encoder: with 8-bit weights when its widths fit the blocks, else candle's f32 BERT.
enum Encoder {
    Eight(Box<Bert8>),
    F32(Box<BertModel>),
}

/// A loaded BERT sentence-embedding model.
pub struct MiniLm {
    model: Encoder,
    /// Bytes of weights held.
    bytes: usize,
    tokenizer: Tokenizer,
    dim: usize,
    device: Device,
}

impl MiniLm {
    /// Loads `model.safetensors`, `config.json` and `tokenizer.json` from `dir`.
    pub fn load(dir: &Path) -> Result<Self, EmbedError> {
        let fail = |path: PathBuf, reason: String| EmbedError::Load { path, reason };
        let config_path = dir.join("config.json");
        let config_text = std::fs::read_to_string(&config_path)
            .map_err(|e| fail(config_path.clone(), e.to_string()))?;
        let config: BertConfig = serde_json::from_str(&config_text)
            .map_err(|e| fail(config_path.clone(), format!("not a BERT config: {e}")))?;

        let tok_path = dir.join("tokenizer.json");
        let mut tokenizer =
            Tokenizer::from_file(&tok_path).map_err(|e| fail(tok_path.clone(), e.to_string()))?;
        tokenizer
            .with_truncation(Some(TruncationParams {
                max_length: MAX_TOKENS,
                ..Default::default()
            }))
            .map_err(|e| fail(tok_path.clone(), e.to_string()))?;
        tokenizer.with_padding(Some(PaddingParams {
            strategy: PaddingStrategy::BatchLongest,
            pad_id: config.pad_token_id as u32,
            ..Default::default()
        }));

        let weights_path = dir.join("model.safetensors");
        let bytes =
            std::fs::read(&weights_path).map_err(|e| fail(weights_path.clone(), e.to_string()))?;
        let device = Device::Cpu;
        let vb = VarBuilder::from_buffered_safetensors(bytes, DType::F32, &device)
            .map_err(|e| fail(weights_path.clone(), e.to_string()))?;
        let not_bert =
            |e: candle_core::Error| fail(weights_path.clone(), format!("not a BERT model: {e}"));
        let eight_bit = Bert8::fits(&config) && std::env::var_os("VOXD_EMBED_F32").is_none();
        let (model, bytes) = if eight_bit {
            let m = Bert8::load(vb, &config).map_err(not_bert)?;
            let bytes = m.bytes();
            (Encoder::Eight(Box::new(m)), bytes)
        } else {
            let m = BertModel::load(vb, &config).map_err(not_bert)?;
            let bytes = std::fs::metadata(&weights_path)
                .map(|m| m.len() as usize)
                .unwrap_or(0);
            (Encoder::F32(Box::new(m)), bytes)
        };
        Ok(MiniLm {
            model,
            bytes,
            tokenizer,
            dim: config.hidden_size,
            device,
        })
    }

    /// Bytes of weights held (8-bit, or the f32 file).
    pub fn weight_bytes(&self) -> usize {
        self.bytes
    }

    /// Length of the vectors.
    pub fn dimensions(&self) -> usize {
        self.dim
    }

    /// Word pieces in `text`, without the `[CLS]`/`[SEP]` the model adds.
    pub fn count_tokens(&self, text: &str) -> usize {
        self.tokenizer
            .encode_fast(text, false)
            .map(|e| e.len())
            .unwrap_or_else(|_| super::estimate_tokens(text))
    }

    /// Embeds `texts` (any number), in order. Texts of similar length are batched together so
    /// little compute goes to padding.
    pub fn embed(&self, texts: &[String]) -> Result<Vec<Vec<f32>>, EmbedError> {
        let mut order: Vec<usize> = (0..texts.len()).collect();
        order.sort_by_key(|&i| texts[i].len());
        let mut out = vec![Vec::new(); texts.len()];
        for group in order.chunks(BATCH) {
            let batch: Vec<&str> = group.iter().map(|&i| texts[i].as_str()).collect();
            let vectors = self.embed_batch(&batch)?;
            for (&i, v) in group.iter().zip(vectors) {
                out[i] = v;
            }
        }
        Ok(out)
    }

    fn embed_batch(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, EmbedError> {
        let compute = |e: candle_core::Error| EmbedError::Compute(e.to_string());
        let encodings = self
            .tokenizer
            .encode_batch(texts.to_vec(), true)
            .map_err(|e| EmbedError::Compute(format!("tokenizer: {e}")))?;
        let rows = encodings.len();
        let cols = encodings.first().map(|e| e.len()).unwrap_or(0);
        let mut ids = Vec::with_capacity(rows * cols);
        let mut mask = Vec::with_capacity(rows * cols);
        for e in &encodings {
            ids.extend_from_slice(e.get_ids());
            mask.extend_from_slice(e.get_attention_mask());
        }
        let hidden = match &self.model {
            Encoder::Eight(m) => m.forward(&ids, &mask, rows, cols).map_err(compute)?,
            Encoder::F32(m) => {
                let ids =
                    Tensor::from_vec(ids.clone(), (rows, cols), &self.device).map_err(compute)?;
                let mask =
                    Tensor::from_vec(mask.clone(), (rows, cols), &self.device).map_err(compute)?;
                let type_ids = ids.zeros_like().map_err(compute)?;
                m.forward(&ids, &type_ids, Some(&mask)).map_err(compute)?
            }
        }; // (rows, cols, dim)
        let mask = Tensor::from_vec(mask, (rows, cols), &self.device).map_err(compute)?;
        let mask = mask
            .to_dtype(DType::F32)
            .map_err(compute)?
            .unsqueeze(2)
            .map_err(compute)?;
        let summed = hidden
            .broadcast_mul(&mask)
            .and_then(|t| t.sum(1))
            .map_err(compute)?;
        let counts = mask.sum(1).map_err(compute)?; // (rows, 1)
        let mean = summed.broadcast_div(&counts).map_err(compute)?;
        let mut vectors: Vec<Vec<f32>> = mean.to_vec2().map_err(compute)?;
        for v in &mut vectors {
            super::normalize(v);
        }
        Ok(vectors)
    }
}
