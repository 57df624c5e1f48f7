//! A BERT encoder whose weight matrices are held 8-bit (Q8_0 blocks): the word-embedding table
//! (a row expanded per token on lookup) and every linear layer. all-MiniLM-L6-v2 then holds 25 MB
//! of weights instead of 91 MB in f32, with vectors within 0.999 cosine of the f32 model's
//! (tested against sentence-transformers' reference).
//!
//! A linear layer's matrix is expanded to f32 for each product and dropped after it (at most
//! 2.4 MB at a time for MiniLM), so the product itself is candle's f32 GEMM. Voxd's 8-bit dot
//! product kernel was tried for the layers too: for one short query it is as fast, but the
//! answer's sentence ranking embeds up to 48 sentences at once, and on such a batch candle's f32
//! GEMM is about three times faster (the first token rose by ~60 ms). Expanding costs
//! ~10.6 M values per forward pass, small next to the products.
//!
//! Post-LayerNorm BERT: embeddings (word + position + token type, LayerNorm), then per layer
//! self-attention (12 heads for MiniLM) with a residual and LayerNorm, and a GELU feed-forward
//! with a residual and LayerNorm. Padding positions are masked out of the attention.

use candle_core::{DType, Device, Module, Result, Tensor, D};
use candle_nn::{LayerNorm, VarBuilder};
use candle_transformers::models::bert::Config;
use voxd_q8::{Matrix, BLOCK};

/// A linear layer: an 8-bit matrix and an f32 bias.
struct Dense {
    w: Matrix,
    b: Tensor,
}

impl Dense {
    fn load(vb: &VarBuilder, rows: usize, cols: usize) -> Result<Dense> {
        let w = vb.get((rows, cols), "weight")?;
        let w = Matrix::quantize(rows, cols, &w.flatten_all()?.to_vec1::<f32>()?)
            .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
        Ok(Dense {
            w,
            b: vb.get(rows, "bias")?,
        })
    }

    /// `x · Wᵀ + b`, with `W` expanded to f32 for this product only.
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (rows, cols) = (self.w.rows(), self.w.cols());
        let mut values = vec![0f32; rows * cols];
        for (r, out) in values.chunks_exact_mut(cols).enumerate() {
            self.w.dequantize_row(r, out);
        }
        let w = Tensor::from_vec(values, (rows, cols), &Device::Cpu)?;
        x.broadcast_matmul(&w.t()?)?.broadcast_add(&self.b)
    }

    fn bytes(&self) -> usize {
        self.w.bytes() + self.b.elem_count() * 4
    }
}

fn layer_norm(vb: VarBuilder, size: usize, eps: f64) -> Result<LayerNorm> {
    Ok(LayerNorm::new(
        vb.get(size, "weight")?,
        vb.get(size, "bias")?,
        eps,
    ))
}

struct Layer {
    query: Dense,
    key: Dense,
    value: Dense,
    attention_out: Dense,
    attention_norm: LayerNorm,
    intermediate: Dense,
    output: Dense,
    output_norm: LayerNorm,
}

/// The encoder.
pub struct Bert8 {
    words: Matrix,
    positions: Tensor,
    token_type: Tensor,
    norm: LayerNorm,
    layers: Vec<Layer>,
    heads: usize,
    hidden: usize,
}

impl Bert8 {
    /// Whether this configuration fits the 8-bit blocks (widths in whole blocks).
    pub fn fits(config: &Config) -> bool {
        config.hidden_size.is_multiple_of(BLOCK)
            && config.intermediate_size.is_multiple_of(BLOCK)
            && config.num_attention_heads > 0
            && config
                .hidden_size
                .is_multiple_of(config.num_attention_heads)
    }

    /// Loads the weights from `vb` (with or without a `bert.` prefix) and quantizes them.
    pub fn load(vb: VarBuilder, config: &Config) -> Result<Bert8> {
        let vb = if vb.contains_tensor("bert.embeddings.word_embeddings.weight") {
            vb.pp("bert")
        } else {
            vb
        };
        let (h, i, eps) = (
            config.hidden_size,
            config.intermediate_size,
            config.layer_norm_eps,
        );
        let e = vb.pp("embeddings");
        let words = e.get((config.vocab_size, h), "word_embeddings.weight")?;
        let words = Matrix::quantize(config.vocab_size, h, &words.flatten_all()?.to_vec1()?)
            .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
        let positions = e.get(
            (config.max_position_embeddings, h),
            "position_embeddings.weight",
        )?;
        let token_type = e
            .get((config.type_vocab_size, h), "token_type_embeddings.weight")?
            .get(0)?;
        let norm = layer_norm(e.pp("LayerNorm"), h, eps)?;
        let mut layers = Vec::with_capacity(config.num_hidden_layers);
        for n in 0..config.num_hidden_layers {
            let l = vb.pp(format!("encoder.layer.{n}"));
            let a = l.pp("attention");
            layers.push(Layer {
                query: Dense::load(&a.pp("self.query"), h, h)?,
                key: Dense::load(&a.pp("self.key"), h, h)?,
                value: Dense::load(&a.pp("self.value"), h, h)?,
                attention_out: Dense::load(&a.pp("output.dense"), h, h)?,
                attention_norm: layer_norm(a.pp("output.LayerNorm"), h, eps)?,
                intermediate: Dense::load(&l.pp("intermediate.dense"), i, h)?,
                output: Dense::load(&l.pp("output.dense"), h, i)?,
                output_norm: layer_norm(l.pp("output.LayerNorm"), h, eps)?,
            });
        }
        Ok(Bert8 {
            words,
            positions,
            token_type,
            norm,
            layers,
            heads: config.num_attention_heads,
            hidden: h,
        })
    }

    /// Bytes of weights held.
    pub fn bytes(&self) -> usize {
        let dense: usize = self
            .layers
            .iter()
            .map(|l| {
                l.query.bytes()
                    + l.key.bytes()
                    + l.value.bytes()
                    + l.attention_out.bytes()
                    + l.intermediate.bytes()
                    + l.output.bytes()
                    + 4 * 4 * self.hidden
            })
            .sum();
        self.words.bytes() + (self.positions.elem_count() + 3 * self.hidden) * 4 + dense
    }

    /// Hidden states `(batch, tokens, hidden)` for token ids `(batch, tokens)` with an attention
    /// mask of 1 (token) and 0 (padding).
    pub fn forward(
        &self,
        ids: &[u32],
        mask: &[u32],
        batch: usize,
        tokens: usize,
    ) -> Result<Tensor> {
        let h = self.hidden;
        let device = Device::Cpu;
        if tokens > self.positions.dim(0)? {
            candle_core::bail!(
                "{tokens} tokens, more than the model's {} positions",
                self.positions.dim(0)?
            );
        }
        let mut rows = vec![0f32; ids.len() * h];
        for (id, row) in ids.iter().zip(rows.chunks_exact_mut(h)) {
            if !self.words.dequantize_row(*id as usize, row) {
                candle_core::bail!("token id {id} is outside the vocabulary");
            }
        }
        let words = Tensor::from_vec(rows, (batch, tokens, h), &device)?;
        let x = words
            .broadcast_add(&self.positions.narrow(0, 0, tokens)?)?
            .broadcast_add(&self.token_type)?;
        let mut x = self.norm.forward(&x)?;
        // Padding gets a large negative score before the softmax.
        let bias: Vec<f32> = mask
            .iter()
            .map(|&m| if m == 0 { -1e9 } else { 0.0 })
            .collect();
        let bias = Tensor::from_vec(bias, (batch, 1, 1, tokens), &device)?;
        let head = h / self.heads;
        let scale = 1.0 / (head as f64).sqrt();
        let split = |t: Tensor| -> Result<Tensor> {
            t.reshape((batch, tokens, self.heads, head))?
                .transpose(1, 2)?
                .contiguous()
        };
        for l in &self.layers {
            let q = split(l.query.forward(&x)?)?;
            let k = split(l.key.forward(&x)?)?;
            let v = split(l.value.forward(&x)?)?;
            let scores = (q.matmul(&k.t()?)? * scale)?.broadcast_add(&bias)?;
            let probs = candle_nn::ops::softmax(&scores, D::Minus1)?;
            let context = probs
                .matmul(&v)?
                .transpose(1, 2)?
                .reshape((batch, tokens, h))?;
            let attended = l.attention_out.forward(&context)?;
            x = l.attention_norm.forward(&(attended + &x)?)?;
            let inner = l.intermediate.forward(&x)?.gelu_erf()?;
            let out = l.output.forward(&inner)?;
            x = l.output_norm.forward(&(out + &x)?)?;
        }
        x.to_dtype(DType::F32)
    }
}
