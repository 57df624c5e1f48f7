//! The tokenizer of a GGUF model, built from its metadata (`tokenizer.ggml.tokens`, `merges`,
//! `token_type`): a byte-level BPE (GPT-2 family, `tokenizer.ggml.model = "gpt2"`) with the
//! pre-tokenizer the `tokenizer.ggml.pre` name stands for, and the control tokens
//! (`<|im_start|>`, `<|im_end|>`, …) as special tokens so the chat template's markers encode to
//! their single ids.

use std::collections::HashMap;

use candle_core::quantized::gguf_file::Value;
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::BPE;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::{AddedToken, Tokenizer};

/// GGUF token type of control tokens.
const CONTROL: i32 = 3;

/// A tokenizer and the ids that end a message.
pub struct GgufTokenizer {
    pub tokenizer: Tokenizer,
    /// Ids after which generation stops: EOS and the chat template's end-of-turn markers.
    pub stop_ids: Vec<u32>,
    pub eos_id: Option<u32>,
    /// Each token's bytes (control tokens marked special), for constrained decoding.
    pub vocab_bytes: Vec<Vec<u8>>,
}

fn strings(md: &HashMap<String, Value>, key: &str) -> Result<Vec<String>, String> {
    let v = md
        .get(key)
        .ok_or_else(|| format!("no `{key}` in the GGUF metadata"))?;
    v.to_vec()
        .map_err(|e| format!("`{key}`: {e}"))?
        .iter()
        .map(|x| x.to_string().cloned().map_err(|e| format!("`{key}`: {e}")))
        .collect()
}

/// Builds the tokenizer from GGUF metadata.
pub fn from_metadata(md: &HashMap<String, Value>) -> Result<GgufTokenizer, String> {
    let model = md
        .get("tokenizer.ggml.model")
        .and_then(|v| v.to_string().ok())
        .map(String::as_str)
        .unwrap_or("");
    if model != "gpt2" {
        return Err(format!(
            "tokenizer model `{model}` is not supported (voxd reads byte-level BPE, `gpt2`, tokenizers from GGUF)"
        ));
    }
    let tokens = strings(md, "tokenizer.ggml.tokens")?;
    let merges: Vec<(String, String)> = strings(md, "tokenizer.ggml.merges")?
        .into_iter()
        .filter_map(|m| {
            m.split_once(' ')
                .map(|(a, b)| (a.to_string(), b.to_string()))
        })
        .collect();
    let types: Vec<i32> = match md.get("tokenizer.ggml.token_type").map(|v| v.to_vec()) {
        Some(Ok(v)) => v.iter().map(|x| x.to_i32().unwrap_or(1)).collect(),
        _ => vec![1; tokens.len()],
    };
    let vocab: tokenizers::models::bpe::Vocab = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.clone(), i as u32))
        .collect();
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .build()
        .map_err(|e| format!("BPE: {e}"))?;
    let mut tokenizer = Tokenizer::new(bpe);
    let pre = md
        .get("tokenizer.ggml.pre")
        .and_then(|v| v.to_string().ok())
        .map(String::as_str)
        .unwrap_or("default");
    let byte_level = ByteLevel::new(false, true, true);
    let pre_tokenizer: PreTokenizerWrapper = match pre {
        // SmolLM / StarCoder: every digit is its own piece, then GPT-2's byte-level split.
        "smollm" | "starcoder" | "refact" => Sequence::new(vec![
            PreTokenizerWrapper::Digits(Digits::new(true)),
            PreTokenizerWrapper::ByteLevel(byte_level),
        ])
        .into(),
        "gpt2" | "default" => byte_level.into(),
        other => {
            tracing::warn!(
                pre = other,
                "unknown GGUF pre-tokenizer; using GPT-2's byte-level split"
            );
            byte_level.into()
        }
    };
    tokenizer.with_pre_tokenizer(Some(pre_tokenizer));
    tokenizer.with_decoder(Some(ByteLevelDecoder::default()));
    let special: Vec<AddedToken> = tokens
        .iter()
        .zip(&types)
        .filter(|(_, &t)| t == CONTROL)
        .map(|(tok, _)| AddedToken::from(tok.clone(), true))
        .collect();
    tokenizer.add_special_tokens(&special);

    let eos_id = md
        .get("tokenizer.ggml.eos_token_id")
        .and_then(|v| v.to_u32().ok());
    let mut stop_ids: Vec<u32> = eos_id.into_iter().collect();
    for marker in ["<|im_end|>", "<|endoftext|>", "<|eot_id|>", "<|end|>"] {
        if let Some(id) = tokens.iter().position(|t| t == marker) {
            if types.get(id) == Some(&CONTROL) && !stop_ids.contains(&(id as u32)) {
                stop_ids.push(id as u32);
            }
        }
    }
    let control: Vec<bool> = (0..tokens.len())
        .map(|i| types.get(i) == Some(&CONTROL))
        .collect();
    let vocab_bytes = super::constrain::token_bytes(&tokens, &control);
    Ok(GgufTokenizer {
        tokenizer,
        stop_ids,
        eos_id,
        vocab_bytes,
    })
}
