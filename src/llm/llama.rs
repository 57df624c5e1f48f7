//! The embedded LLM's forward pass: a llama-architecture transformer whose linear layers run on
//! voxd's own 8-bit kernels ([`voxd_q8`]), with candle for the rest (norms, rotary embeddings,
//! attention).
//!
//! Why not candle's `quantized_llama` as is: its Q8_0 matmul runs a prompt one dot product at a
//! time, so prefill ran at ~140 tokens/s on 2 cores (the first token of a grounded answer waited
//! seconds); and it keeps the token embeddings as f32 (113 MB for SmolLM2's 49k × 576). Here the
//! embeddings stay 8-bit (rows are expanded on lookup; the output head reads the same blocks when
//! the model ties them) and the kernels compute tiles of dot products. Over Q8_0 weights each dot
//! product does the same operations in the same order as candle's kernel, so the logits are bit
//! for bit candle's; Q4_1 weights stay 4-bit, and there only the order of float additions differs
//! from candle's scalar code (tested: `tests/llm.rs`).
//!
//! Models this does not cover (mixtures of experts, K-quant or float weights, which candle runs
//! with fast kernels of its own) go through candle's model: [`Model::Candle`].

use std::sync::Arc;

use candle_core::quantized::{gguf_file, GgmlDType, QTensor};
use candle_core::{CpuStorage, CustomOp1, DType, Device, IndexOp, Layout, Shape, Tensor};
use candle_transformers::models::quantized_llama::ModelWeights;
use voxd_q8::Matrix;

type Result<T> = candle_core::Result<T>;

/// Positions the rotary tables cover.
pub const MAX_POSITIONS: usize = 4096;

/// Weight types run on voxd's kernels: Q8_0 and Q4_1 as they are (Q4_1 stays 4-bit: 20 bytes per
/// 32 weights); Q5_0 and Q5_1 (for which candle has only scalar CPU code) re-quantized to Q8_0,
/// which loses almost nothing (8 bits per weight instead of 5).
const OWN_KERNELS: &[GgmlDType] = &[
    GgmlDType::Q8_0,
    GgmlDType::Q4_1,
    GgmlDType::Q5_0,
    GgmlDType::Q5_1,
];

/// A loaded model with its attention state (cloning shares the weights and the state's tensors).
#[derive(Clone)]
pub enum Model {
    /// voxd's forward pass.
    Own(Llama),
    /// candle's, for the models the own one does not cover.
    Candle(Box<ModelWeights>),
}

impl Model {
    /// Runs `tokens` (shape `[1, n]`) at positions `pos..pos + n` after the state so far; the
    /// logits after the last one (`[1, vocab]`).
    pub fn forward(&mut self, tokens: &Tensor, pos: usize) -> Result<Tensor> {
        match self {
            Model::Own(m) => match pool() {
                Some(p) => p.install(|| m.forward(tokens, pos)),
                None => m.forward(tokens, pos),
            },
            Model::Candle(m) => m.forward(tokens, pos),
        }
    }

    /// Bytes of weights held (`None` for candle's model, which does not say).
    pub fn weight_bytes(&self) -> Option<usize> {
        match self {
            Model::Own(m) => Some(m.weights.bytes()),
            Model::Candle(_) => None,
        }
    }

    /// Forgets the attention state past the first `len` positions, so the next forward pass
    /// continues at `len` (a cached prompt shared up to there, then different). False when it
    /// cannot: candle's model keeps its state to itself.
    pub fn truncate(&mut self, len: usize) -> bool {
        match self {
            Model::Own(m) => m.truncate(len).is_ok(),
            Model::Candle(_) => false,
        }
    }

    /// Positions the attention state covers (`None` for candle's model, which does not say).
    pub fn positions(&self) -> Option<usize> {
        match self {
            Model::Own(m) => Some(
                m.kv.first()
                    .and_then(|kv| kv.as_ref())
                    .and_then(|(k, _)| k.dim(2).ok())
                    .unwrap_or(0),
            ),
            Model::Candle(_) => None,
        }
    }

    /// Which forward pass runs (for the log).
    pub fn kind(&self) -> &'static str {
        match self {
            Model::Own(_) => "voxd q8 kernels",
            Model::Candle(_) => "candle quantized_llama",
        }
    }
}

/// The threads a forward pass runs on: the calling thread hands the whole pass to them, so the
/// kernels' parallel parts and candle's (attention matmuls) share one set of threads, one per
/// core, instead of a caller plus idle workers spinning beside it.
fn pool() -> Option<&'static rayon::ThreadPool> {
    static POOL: std::sync::OnceLock<Option<rayon::ThreadPool>> = std::sync::OnceLock::new();
    POOL.get_or_init(|| {
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|i| format!("llm-compute-{i}"))
            .build()
            .map_err(
                |e| tracing::warn!(error = %e, "no LLM compute threads; using rayon's global pool"),
            )
            .ok()
    })
    .as_ref()
}

/// Reads a llama-architecture GGUF: with voxd's forward pass when its weights allow, else candle's.
pub fn load(content: gguf_file::Content, file: &mut std::fs::File) -> Result<Model> {
    let experts = content
        .metadata
        .get("llama.expert_count")
        .and_then(|v| v.to_u32().ok())
        .unwrap_or(0);
    let own = experts <= 1
        && content
            .tensor_infos
            .iter()
            .filter(|(name, _)| is_linear(name))
            .all(|(_, t)| OWN_KERNELS.contains(&t.ggml_dtype));
    if own {
        Ok(Model::Own(Llama::load(&content, file)?))
    } else {
        Ok(Model::Candle(Box::new(ModelWeights::from_gguf(
            content,
            file,
            &Device::Cpu,
        )?)))
    }
}

/// Whether a tensor is a layer's projection matrix (the matmuls).
fn is_linear(name: &str) -> bool {
    name.starts_with("blk.")
        && [
            "attn_q",
            "attn_k",
            "attn_v",
            "attn_output",
            "ffn_gate",
            "ffn_up",
            "ffn_down",
        ]
        .iter()
        .any(|p| name.ends_with(&format!(".{p}.weight")))
}

/// One transformer block's weights.
struct Block {
    attn_norm: Tensor,
    q: Matrix,
    k: Matrix,
    v: Matrix,
    o: Matrix,
    ffn_norm: Tensor,
    gate: Matrix,
    up: Matrix,
    down: Matrix,
}

/// The weights, shared by every clone of the model.
struct Weights {
    embeddings: Matrix,
    /// `None`: the output head is the embedding matrix (tied).
    output: Option<Matrix>,
    blocks: Vec<Block>,
    norm: Tensor,
    eps: f32,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
    cos: Tensor,
    sin: Tensor,
    neg_inf: Tensor,
}

impl Weights {
    fn bytes(&self) -> usize {
        let m = |m: &Matrix| m.bytes();
        let t = |t: &Tensor| t.elem_count() * 4;
        m(&self.embeddings)
            + self.output.as_ref().map_or(0, m)
            + t(&self.norm)
            + self
                .blocks
                .iter()
                .map(|b| {
                    t(&b.attn_norm)
                        + t(&b.ffn_norm)
                        + [&b.q, &b.k, &b.v, &b.o, &b.gate, &b.up, &b.down]
                            .into_iter()
                            .map(m)
                            .sum::<usize>()
                })
                .sum::<usize>()
    }
}

/// voxd's llama forward pass: shared weights and this sequence's keys and values per block.
#[derive(Clone)]
pub struct Llama {
    weights: Arc<Weights>,
    kv: Vec<Option<(Tensor, Tensor)>>,
}

/// A matrix for the kernels (Q8_0 or Q4_1 as stored, anything else re-quantized to Q8_0), from
/// any GGUF tensor whose rows are whole blocks. `VOXD_LLM_Q8=1` re-quantizes Q4_1 to Q8_0 too:
/// 47 MB more for SmolLM2-135M, prefill ~10 % faster, decoding slower.
fn matrix(t: QTensor) -> Result<Matrix> {
    let dims = t.shape().dims().to_vec();
    let (rows, cols) = match dims.as_slice() {
        [r, c] => (*r, *c),
        other => candle_core::bail!("expected a matrix, got shape {other:?}"),
    };
    let m = if t.dtype() == GgmlDType::Q8_0 {
        Matrix::from_gguf_bytes(rows, cols, &t.data()?)
    } else if t.dtype() == GgmlDType::Q4_1 && std::env::var_os("VOXD_LLM_Q8").is_none() {
        Matrix::from_gguf_q4_1_bytes(rows, cols, &t.data()?)
    } else {
        let values = t
            .dequantize(&Device::Cpu)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        Matrix::quantize(rows, cols, &values)
    };
    m.map_err(|e| candle_core::Error::Msg(e.to_string()))
}

impl Llama {
    fn load(content: &gguf_file::Content, file: &mut std::fs::File) -> Result<Self> {
        let meta = |key: &str| {
            content
                .metadata
                .get(key)
                .ok_or_else(|| candle_core::Error::Msg(format!("the GGUF has no `{key}`")))
        };
        let heads = meta("llama.attention.head_count")?.to_u32()? as usize;
        let kv_heads = meta("llama.attention.head_count_kv")?.to_u32()? as usize;
        let layers = meta("llama.block_count")?.to_u32()? as usize;
        let hidden = meta("llama.embedding_length")?.to_u32()? as usize;
        let rope_dim = meta("llama.rope.dimension_count")?.to_u32()? as usize;
        let eps = meta("llama.attention.layer_norm_rms_epsilon")?.to_f32()?;
        let base = meta("llama.rope.freq_base")
            .and_then(|v| v.to_f32())
            .unwrap_or(10_000.0);
        if heads == 0
            || kv_heads == 0
            || !heads.is_multiple_of(kv_heads)
            || !hidden.is_multiple_of(heads)
        {
            candle_core::bail!("inconsistent attention heads: {heads} heads, {kv_heads} key/value heads, width {hidden}");
        }
        let mut tensor = |name: &str| content.tensor(file, name, &Device::Cpu);
        let vector = |t: QTensor| t.dequantize(&Device::Cpu);
        let embeddings = matrix(tensor("token_embd.weight")?)?;
        let output = match tensor("output.weight") {
            Ok(t) => Some(matrix(t)?),
            Err(_) => None,
        };
        let norm = vector(tensor("output_norm.weight")?)?;
        let mut blocks = Vec::with_capacity(layers);
        for i in 0..layers {
            let mut get = |part: &str| tensor(&format!("blk.{i}.{part}.weight"));
            blocks.push(Block {
                attn_norm: vector(get("attn_norm")?)?,
                q: matrix(get("attn_q")?)?,
                k: matrix(get("attn_k")?)?,
                v: matrix(get("attn_v")?)?,
                o: matrix(get("attn_output")?)?,
                ffn_norm: vector(get("ffn_norm")?)?,
                gate: matrix(get("ffn_gate")?)?,
                up: matrix(get("ffn_up")?)?,
                down: matrix(get("ffn_down")?)?,
            });
        }
        // Rotary tables: angle = position × base^(−2i/d).
        let inverse: Vec<f32> = (0..rope_dim)
            .step_by(2)
            .map(|i| 1f32 / base.powf(i as f32 / rope_dim as f32))
            .collect();
        let inverse = Tensor::new(inverse.as_slice(), &Device::Cpu)?;
        let angles = Tensor::arange(0, MAX_POSITIONS as u32, &Device::Cpu)?
            .to_dtype(DType::F32)?
            .reshape((MAX_POSITIONS, 1))?
            .matmul(&inverse.reshape((1, inverse.elem_count()))?)?;
        Ok(Llama {
            kv: vec![None; layers],
            weights: Arc::new(Weights {
                embeddings,
                output,
                blocks,
                norm,
                eps,
                heads,
                kv_heads,
                head_dim: hidden / heads,
                cos: angles.cos()?,
                sin: angles.sin()?,
                neg_inf: Tensor::new(f32::NEG_INFINITY, &Device::Cpu)?,
            }),
        })
    }

    /// Keeps the keys and values of the first `len` positions only (views of the same
    /// tensors: the next pass's concatenation copies them into its own).
    fn truncate(&mut self, len: usize) -> Result<()> {
        for kv in self.kv.iter_mut() {
            if let Some((k, v)) = kv.as_ref() {
                let have = k.dim(2)?;
                if len > have {
                    candle_core::bail!("cannot keep {len} of {have} positions");
                }
                *kv = Some((k.narrow(2, 0, len)?, v.narrow(2, 0, len)?));
            }
        }
        Ok(())
    }

    /// Runs `tokens` (`[1, n]`) at positions `pos..pos + n`; the logits after the last one.
    pub fn forward(&mut self, tokens: &Tensor, pos: usize) -> Result<Tensor> {
        let w = self.weights.clone();
        let (_, n) = tokens.dims2()?;
        if n == 0 || pos + n > MAX_POSITIONS {
            candle_core::bail!(
                "positions {pos}..{} are outside 0..{MAX_POSITIONS}",
                pos + n
            );
        }
        let ids = tokens.flatten_all()?.to_vec1::<u32>()?;
        let width = w.embeddings.cols();
        let mut x = vec![0f32; n * width];
        for (id, row) in ids.iter().zip(x.chunks_exact_mut(width)) {
            if !w.embeddings.dequantize_row(*id as usize, row) {
                candle_core::bail!("token {id} is outside the vocabulary");
            }
        }
        let mut x = Tensor::from_vec(x, (1, n, width), &Device::Cpu)?;
        let mask = (n > 1)
            .then(|| candle_transformers::utils::build_causal_mask(n, pos, &Device::Cpu))
            .transpose()?;
        for (block, kv) in w.blocks.iter().zip(self.kv.iter_mut()) {
            let h = candle_nn::ops::rms_norm(&x, &block.attn_norm, w.eps)?;
            let h = attention(&w, block, &h, mask.as_ref(), pos, kv)?;
            x = (h + &x)?;
            let h = candle_nn::ops::rms_norm(&x, &block.ffn_norm, w.eps)?;
            let gate = linear(&block.gate, &h)?;
            let up = linear(&block.up, &h)?;
            let h = linear(&block.down, &(candle_nn::ops::silu(&gate)? * up)?)?;
            x = (h + &x)?;
        }
        let x = candle_nn::ops::rms_norm(&x, &w.norm, w.eps)?;
        let last = x.i((.., n - 1, ..))?;
        linear(w.output.as_ref().unwrap_or(&w.embeddings), &last)
    }
}

/// Self-attention of one block over the keys and values so far (`kv`, extended here).
fn attention(
    w: &Weights,
    block: &Block,
    x: &Tensor,
    mask: Option<&Tensor>,
    pos: usize,
    kv: &mut Option<(Tensor, Tensor)>,
) -> Result<Tensor> {
    let (b, n, width) = x.dims3()?;
    let d = w.head_dim;
    let q = linear(&block.q, x)?
        .reshape((b, n, w.heads, d))?
        .transpose(1, 2)?;
    let k = linear(&block.k, x)?
        .reshape((b, n, w.kv_heads, d))?
        .transpose(1, 2)?;
    let v = linear(&block.v, x)?
        .reshape((b, n, w.kv_heads, d))?
        .transpose(1, 2)?
        .contiguous()?;
    let rotate = |t: &Tensor| {
        let cos = w.cos.narrow(0, pos, n)?;
        let sin = w.sin.narrow(0, pos, n)?;
        candle_nn::rotary_emb::rope_i(&t.contiguous()?, &cos, &sin)
    };
    let (q, k) = (rotate(&q)?, rotate(&k)?);
    let (k, v) = match kv.as_ref() {
        Some((k0, v0)) if pos > 0 => (Tensor::cat(&[k0, &k], 2)?, Tensor::cat(&[v0, &v], 2)?),
        _ => (k, v),
    };
    *kv = Some((k.clone(), v.clone()));
    let group = w.heads / w.kv_heads;
    let k = candle_transformers::utils::repeat_kv(k, group)?;
    let v = candle_transformers::utils::repeat_kv(v, group)?;
    let scores = (q.matmul(&k.t()?)? / (d as f64).sqrt())?;
    let scores = match mask {
        Some(m) => m
            .broadcast_as(scores.shape())?
            .where_cond(&w.neg_inf.broadcast_as(scores.shape())?, &scores)?,
        None => scores,
    };
    let p = candle_nn::ops::softmax_last_dim(&scores)?;
    let y = p
        .matmul(&v.contiguous()?)?
        .transpose(1, 2)?
        .reshape((b, n, width))?;
    linear(&block.o, &y)
}

/// `x · Wᵀ` over the last dimension of `x`.
pub(crate) fn linear(w: &Matrix, x: &Tensor) -> Result<Tensor> {
    x.contiguous()?.apply_op1_no_bwd(&Linear(w))
}

/// [`voxd_q8::Matrix::matmul`] as a candle operation.
struct Linear<'a>(&'a Matrix);

impl CustomOp1 for Linear<'_> {
    fn name(&self) -> &'static str {
        "voxd-q8-linear"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let CpuStorage::F32(data) = storage else {
            candle_core::bail!("the Q8 linear layer takes f32 input");
        };
        let Some((start, end)) = layout.contiguous_offsets() else {
            candle_core::bail!("the Q8 linear layer takes contiguous input");
        };
        let mut dims = layout.shape().dims().to_vec();
        let cols = dims.last().copied().unwrap_or(0);
        if cols != self.0.cols() {
            candle_core::bail!("input width {cols}, matrix width {}", self.0.cols());
        }
        let m = (end - start) / cols;
        let mut out = vec![0f32; m * self.0.rows()];
        self.0
            .matmul(&data[start..end], m, &mut out)
            .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
        if let Some(last) = dims.last_mut() {
            *last = self.0.rows();
        }
        Ok((CpuStorage::F32(out), Shape::from(dims)))
    }
}
