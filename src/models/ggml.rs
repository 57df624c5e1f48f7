//! whisper.cpp's ggml model file: writing it (for the converter) and checking it before
//! whisper.cpp sees it.
//!
//! whisper.cpp trusts its input: a truncated or foreign file can make it read past the end or
//! abort. So every file voxd hands it (converted or brought by a user) is first walked here:
//! header, mel filters, vocabulary and the index of every tensor, with each length checked
//! against the file's size, and every tensor whisper.cpp requires present.
//!
//! Layout: u32 magic `ggml`; eleven i32 hyper-parameters; i32 n_mel, i32 n_fft and the f32 mel
//! filterbank; i32 token count then (u32 length, bytes) per token; then tensors until the end of
//! the file: i32 n_dims, i32 name length, i32 type, dims (innermost first), name, data.

use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom, Write};
use std::path::Path;

use half::f16;

use super::ModelError;

/// `ggml` in little-endian byte order.
pub const MAGIC: u32 = 0x6767_6d6c;

/// Whisper's hyper-parameters as stored in the file header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WhisperHparams {
    pub n_vocab: i32,
    pub n_audio_ctx: i32,
    pub n_audio_state: i32,
    pub n_audio_head: i32,
    pub n_audio_layer: i32,
    pub n_text_ctx: i32,
    pub n_text_state: i32,
    pub n_text_head: i32,
    pub n_text_layer: i32,
    pub n_mels: i32,
    pub ftype: i32,
}

impl WhisperHparams {
    fn as_array(&self) -> [i32; 11] {
        [
            self.n_vocab,
            self.n_audio_ctx,
            self.n_audio_state,
            self.n_audio_head,
            self.n_audio_layer,
            self.n_text_ctx,
            self.n_text_state,
            self.n_text_head,
            self.n_text_layer,
            self.n_mels,
            self.ftype,
        ]
    }

    fn from_array(a: [i32; 11]) -> Self {
        WhisperHparams {
            n_vocab: a[0],
            n_audio_ctx: a[1],
            n_audio_state: a[2],
            n_audio_head: a[3],
            n_audio_layer: a[4],
            n_text_ctx: a[5],
            n_text_state: a[6],
            n_text_head: a[7],
            n_text_layer: a[8],
            n_mels: a[9],
            ftype: a[10],
        }
    }
}

/// A tensor's entry in the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorInfo {
    pub name: String,
    /// Dimensions, innermost first (ggml order).
    pub dims: Vec<u64>,
    /// ggml type id (0 = f32, 1 = f16, quantised types above).
    pub ttype: u32,
    /// Byte offset of the data in the file.
    pub offset: u64,
    /// Byte length of the data.
    pub nbytes: u64,
}

/// What [`inspect`] found in a file.
#[derive(Debug, Clone)]
pub struct GgmlSummary {
    pub hparams: WhisperHparams,
    pub n_mel_filters: i32,
    pub n_fft: i32,
    pub vocab: Vec<Vec<u8>>,
    pub tensors: Vec<TensorInfo>,
    pub file_size: u64,
}

impl GgmlSummary {
    /// Finds a tensor by name.
    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.iter().find(|t| t.name == name)
    }
}

/// (bytes per block, elements per block) of a ggml type whisper.cpp can load.
fn type_layout(ttype: u32) -> Option<(u64, u64)> {
    Some(match ttype {
        0 => (4, 1),     // f32
        1 => (2, 1),     // f16
        2 => (18, 32),   // q4_0
        3 => (20, 32),   // q4_1
        6 => (22, 32),   // q5_0
        7 => (24, 32),   // q5_1
        8 => (34, 32),   // q8_0
        10 => (84, 256), // q2_k
        11 => (110, 256),
        12 => (144, 256),
        13 => (176, 256),
        14 => (210, 256),
        30 => (2, 1), // bf16
        _ => return None,
    })
}

/// The tensors whisper.cpp requires for a model with these layer counts.
pub fn required_whisper_tensors(n_audio_layer: usize, n_text_layer: usize) -> Vec<String> {
    let mut names: Vec<String> = [
        "encoder.positional_embedding",
        "encoder.conv1.weight",
        "encoder.conv1.bias",
        "encoder.conv2.weight",
        "encoder.conv2.bias",
        "encoder.ln_post.weight",
        "encoder.ln_post.bias",
        "decoder.positional_embedding",
        "decoder.token_embedding.weight",
        "decoder.ln.weight",
        "decoder.ln.bias",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let attn = |prefix: &str| -> Vec<String> {
        [
            "query.weight",
            "query.bias",
            "key.weight",
            "value.weight",
            "value.bias",
            "out.weight",
            "out.bias",
        ]
        .iter()
        .map(|p| format!("{prefix}.{p}"))
        .collect()
    };
    let common = |b: &str| -> Vec<String> {
        let mut v = vec![
            format!("{b}.attn_ln.weight"),
            format!("{b}.attn_ln.bias"),
            format!("{b}.mlp_ln.weight"),
            format!("{b}.mlp_ln.bias"),
            format!("{b}.mlp.0.weight"),
            format!("{b}.mlp.0.bias"),
            format!("{b}.mlp.2.weight"),
            format!("{b}.mlp.2.bias"),
        ];
        v.extend(attn(&format!("{b}.attn")));
        v
    };
    for i in 0..n_audio_layer {
        names.extend(common(&format!("encoder.blocks.{i}")));
    }
    for i in 0..n_text_layer {
        let b = format!("decoder.blocks.{i}");
        names.extend(common(&b));
        names.push(format!("{b}.cross_attn_ln.weight"));
        names.push(format!("{b}.cross_attn_ln.bias"));
        names.extend(attn(&format!("{b}.cross_attn")));
    }
    names
}

struct Reader {
    inner: BufReader<File>,
    pos: u64,
    size: u64,
}

impl Reader {
    fn bytes(&mut self, n: u64, what: &str) -> Result<Vec<u8>, String> {
        if self.size - self.pos < n {
            return Err(format!(
                "truncated: {what} needs {n} bytes at offset {} but the file has {}",
                self.pos, self.size
            ));
        }
        let mut buf = vec![0u8; n as usize];
        self.inner.read_exact(&mut buf).map_err(|e| e.to_string())?;
        self.pos += n;
        Ok(buf)
    }
    fn i32(&mut self, what: &str) -> Result<i32, String> {
        let b = self.bytes(4, what)?;
        Ok(i32::from_le_bytes(b.try_into().expect("4 bytes")))
    }
    fn skip(&mut self, n: u64, what: &str) -> Result<(), String> {
        if self.size - self.pos < n {
            return Err(format!(
                "truncated: {what} needs {n} bytes at offset {} but the file has {}",
                self.pos, self.size
            ));
        }
        self.inner
            .seek(SeekFrom::Current(n as i64))
            .map_err(|e| e.to_string())?;
        self.pos += n;
        Ok(())
    }
}

/// Walks a ggml Whisper file without loading its tensor data.
pub fn inspect(path: &Path) -> Result<GgmlSummary, ModelError> {
    let file = File::open(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            ModelError::NoSuchFile {
                path: path.to_path_buf(),
            }
        } else {
            ModelError::io(path, e)
        }
    })?;
    let size = file.metadata().map_err(|e| ModelError::io(path, e))?.len();
    let mut r = Reader {
        inner: BufReader::with_capacity(1 << 16, file),
        pos: 0,
        size,
    };
    let not_ggml = |reason: String| ModelError::NotGgml {
        path: path.to_path_buf(),
        reason,
    };
    let corrupt = |reason: String| ModelError::Corrupt {
        path: path.to_path_buf(),
        reason,
    };

    let hparams = read_hparams(&mut r, &not_ggml, &corrupt)?;

    let n_mel_filters = r.i32("mel filter count").map_err(corrupt)?;
    let n_fft = r.i32("mel filter size").map_err(corrupt)?;
    if !sane(n_mel_filters, 512) || !sane(n_fft, 1 << 14) {
        return Err(corrupt(format!(
            "mel filterbank header {n_mel_filters} x {n_fft} is implausible"
        )));
    }
    r.skip(4 * n_mel_filters as u64 * n_fft as u64, "mel filterbank")
        .map_err(corrupt)?;

    let n_tokens = r.i32("vocabulary size").map_err(corrupt)?;
    if n_tokens < 0 || n_tokens > hparams.n_vocab {
        return Err(corrupt(format!(
            "vocabulary has {n_tokens} entries but the model's n_vocab is {}",
            hparams.n_vocab
        )));
    }
    let mut vocab = Vec::with_capacity(n_tokens as usize);
    for i in 0..n_tokens {
        let len = r.i32("token length").map_err(corrupt)?;
        if !(0..=4096).contains(&len) {
            return Err(corrupt(format!("token {i} has implausible length {len}")));
        }
        vocab.push(r.bytes(len as u64, "token").map_err(corrupt)?);
    }

    let mut tensors = Vec::new();
    while r.pos < r.size {
        let tensor = read_tensor(&mut r, tensors.len(), &corrupt)?;
        tensors.push(tensor);
    }

    Ok(GgmlSummary {
        hparams,
        n_mel_filters,
        n_fft,
        vocab,
        tensors,
        file_size: size,
    })
}

/// Whether a header count lies in 1..=max.
fn sane(v: i32, max: i32) -> bool {
    (1..=max).contains(&v)
}

/// The magic and the hyper-parameters, checked for plausibility.
fn read_hparams(
    r: &mut Reader,
    not_ggml: &dyn Fn(String) -> ModelError,
    corrupt: &dyn Fn(String) -> ModelError,
) -> Result<WhisperHparams, ModelError> {
    let size = r.size;
    let magic = r
        .i32("magic")
        .map_err(|_| not_ggml(format!("only {size} bytes long")))? as u32;
    if magic != MAGIC {
        let hint = if magic == 0x4655_4747 {
            " (this is a GGUF file, as used for LLMs, not a whisper.cpp model)"
        } else {
            ""
        };
        return Err(not_ggml(format!(
            "bad magic 0x{magic:08x}, expected 0x{MAGIC:08x}{hint}"
        )));
    }
    let mut hp = [0i32; 11];
    for v in hp.iter_mut() {
        *v = r.i32("hyper-parameters").map_err(corrupt)?;
    }
    let hparams = WhisperHparams::from_array(hp);
    if !(sane(hparams.n_vocab, 1 << 20)
        && sane(hparams.n_audio_ctx, 1 << 16)
        && sane(hparams.n_audio_state, 1 << 14)
        && sane(hparams.n_audio_head, 1 << 10)
        && sane(hparams.n_audio_layer, 256)
        && sane(hparams.n_text_ctx, 1 << 16)
        && sane(hparams.n_text_state, 1 << 14)
        && sane(hparams.n_text_head, 1 << 10)
        && sane(hparams.n_text_layer, 256)
        && sane(hparams.n_mels, 512))
    {
        return Err(not_ggml(format!(
            "implausible hyper-parameters {hparams:?}"
        )));
    }
    Ok(hparams)
}

/// One tensor's header (the `index`-th), its data skipped.
fn read_tensor(
    r: &mut Reader,
    index: usize,
    corrupt: &dyn Fn(String) -> ModelError,
) -> Result<TensorInfo, ModelError> {
    let n_dims = r.i32("tensor header").map_err(corrupt)?;
    let name_len = r.i32("tensor header").map_err(corrupt)?;
    let ttype = r.i32("tensor header").map_err(corrupt)?;
    if !(1..=4).contains(&n_dims) || !(1..=1024).contains(&name_len) {
        return Err(corrupt(format!(
            "tensor #{} has a bad header (dims {n_dims}, name length {name_len}) at offset {}",
            index,
            r.pos - 12
        )));
    }
    let mut dims = Vec::with_capacity(n_dims as usize);
    for _ in 0..n_dims {
        let d = r.i32("tensor dims").map_err(corrupt)?;
        if d <= 0 {
            return Err(corrupt(format!("tensor #{} has dimension {d}", index)));
        }
        dims.push(d as u64);
    }
    let name = String::from_utf8(r.bytes(name_len as u64, "tensor name").map_err(corrupt)?)
        .map_err(|_| corrupt(format!("tensor #{} has a name that is not UTF-8", index)))?;
    let (block_bytes, block_elems) = u32::try_from(ttype)
        .ok()
        .and_then(type_layout)
        .ok_or_else(|| corrupt(format!("tensor {name} has unsupported type {ttype}")))?;
    let elems = dims.iter().product::<u64>();
    if elems % block_elems != 0 {
        return Err(corrupt(format!(
            "tensor {name}: {elems} elements do not fill whole blocks"
        )));
    }
    let nbytes = elems / block_elems * block_bytes;
    let offset = r.pos;
    r.skip(nbytes, &format!("tensor {name}")).map_err(corrupt)?;
    Ok(TensorInfo {
        name,
        dims,
        ttype: ttype as u32,
        offset,
        nbytes,
    })
}

/// Checks that `path` is a complete whisper.cpp model: structure as in [`inspect`], and every
/// tensor whisper.cpp will ask for is present.
pub fn validate_whisper(path: &Path) -> Result<GgmlSummary, ModelError> {
    let summary = inspect(path)?;
    let hp = summary.hparams;
    let missing: Vec<String> =
        required_whisper_tensors(hp.n_audio_layer as usize, hp.n_text_layer as usize)
            .into_iter()
            .filter(|n| summary.tensor(n).is_none())
            .collect();
    if !missing.is_empty() {
        return Err(ModelError::Corrupt {
            path: path.to_path_buf(),
            reason: format!(
                "{} required tensors are missing (first: {})",
                missing.len(),
                missing[0]
            ),
        });
    }
    Ok(summary)
}

/// Tensor data to write.
pub enum Data<'a> {
    F32(&'a [f32]),
    F16(&'a [f16]),
    /// GGML Q8_0 blocks (32 values each), for the matrices of an 8-bit model.
    Q8_0(&'a [voxd_q8::Block]),
}

/// Writes the parts of a ggml Whisper file in order.
pub struct Writer<W: Write> {
    out: W,
    written: u64,
}

impl<W: Write> Writer<W> {
    pub fn new(out: W) -> Self {
        Writer { out, written: 0 }
    }

    fn put(&mut self, b: &[u8]) -> std::io::Result<()> {
        self.out.write_all(b)?;
        self.written += b.len() as u64;
        Ok(())
    }

    fn i32(&mut self, v: i32) -> std::io::Result<()> {
        self.put(&v.to_le_bytes())
    }

    /// Bytes written so far.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// Magic and hyper-parameters.
    pub fn header(&mut self, hp: &WhisperHparams) -> std::io::Result<()> {
        self.put(&MAGIC.to_le_bytes())?;
        for v in hp.as_array() {
            self.i32(v)?;
        }
        Ok(())
    }

    /// The mel filterbank, `n_mel` rows of `n_fft` values.
    pub fn mel_filters(
        &mut self,
        n_mel: usize,
        n_fft: usize,
        filters: &[f32],
    ) -> std::io::Result<()> {
        assert_eq!(filters.len(), n_mel * n_fft, "filterbank size");
        self.i32(n_mel as i32)?;
        self.i32(n_fft as i32)?;
        for v in filters {
            self.put(&v.to_le_bytes())?;
        }
        Ok(())
    }

    /// The vocabulary as raw token bytes.
    pub fn vocab(&mut self, tokens: &[Vec<u8>]) -> std::io::Result<()> {
        self.i32(tokens.len() as i32)?;
        for t in tokens {
            self.put(&(t.len() as u32).to_le_bytes())?;
            self.put(t)?;
        }
        Ok(())
    }

    /// One tensor; `shape` is outermost first (numpy order) and is written reversed.
    pub fn tensor(&mut self, name: &str, shape: &[usize], data: Data<'_>) -> std::io::Result<()> {
        let (ttype, len) = match &data {
            Data::F32(d) => (0, d.len()),
            Data::F16(d) => (1, d.len()),
            Data::Q8_0(b) => (8, b.len() * voxd_q8::BLOCK),
        };
        assert_eq!(
            shape.iter().product::<usize>(),
            len,
            "tensor {name}: shape and data"
        );
        self.i32(shape.len() as i32)?;
        self.i32(name.len() as i32)?;
        self.i32(ttype)?;
        for d in shape.iter().rev() {
            self.i32(*d as i32)?;
        }
        self.put(name.as_bytes())?;
        let mut buf = Vec::with_capacity(len * 4);
        match data {
            Data::F32(d) => d
                .iter()
                .for_each(|v| buf.extend_from_slice(&v.to_le_bytes())),
            Data::F16(d) => d
                .iter()
                .for_each(|v| buf.extend_from_slice(&v.to_le_bytes())),
            Data::Q8_0(blocks) => blocks.iter().for_each(|b| {
                buf.extend_from_slice(&b.d.to_le_bytes());
                buf.extend(b.qs.iter().map(|&q| q as u8));
            }),
        }
        self.put(&buf)
    }

    pub fn finish(mut self) -> std::io::Result<W> {
        self.out.flush()?;
        Ok(self.out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small_file(dir: &Path) -> std::path::PathBuf {
        let hp = WhisperHparams {
            n_vocab: 3,
            n_audio_ctx: 2,
            n_audio_state: 2,
            n_audio_head: 1,
            n_audio_layer: 1,
            n_text_ctx: 2,
            n_text_state: 2,
            n_text_head: 1,
            n_text_layer: 1,
            n_mels: 2,
            ftype: 1,
        };
        let path = dir.join("m.bin");
        let mut w = Writer::new(std::io::BufWriter::new(File::create(&path).unwrap()));
        w.header(&hp).unwrap();
        w.mel_filters(2, 3, &[0.0; 6]).unwrap();
        w.vocab(&[b"a".to_vec(), b"bc".to_vec()]).unwrap();
        // An optional tensor first, so that every cut leaves a required one missing or short.
        w.tensor("extra", &[3], Data::F32(&[1.0, 2.0, 3.0]))
            .unwrap();
        for name in required_whisper_tensors(1, 1) {
            w.tensor(&name, &[2, 2], Data::F16(&[f16::ONE; 4])).unwrap();
        }
        w.finish().unwrap();
        path
    }

    #[test]
    fn round_trips_header_vocab_and_tensor_index() {
        let dir = tempfile::tempdir().unwrap();
        let path = small_file(dir.path());
        let s = validate_whisper(&path).unwrap();
        assert_eq!(s.hparams.n_vocab, 3);
        assert_eq!(s.vocab, vec![b"a".to_vec(), b"bc".to_vec()]);
        let extra = s.tensor("extra").unwrap();
        assert_eq!(
            (extra.dims.clone(), extra.ttype, extra.nbytes),
            (vec![3], 0, 12)
        );
        let last = s.tensors.last().unwrap();
        let required = required_whisper_tensors(1, 1);
        assert_eq!((&last.name, last.nbytes), (required.last().unwrap(), 8));
        assert_eq!(last.offset + last.nbytes, s.file_size);
    }

    #[test]
    fn truncated_files_are_errors_at_every_length() {
        let dir = tempfile::tempdir().unwrap();
        let path = small_file(dir.path());
        let full = std::fs::read(&path).unwrap();
        let cut_path = dir.path().join("cut.bin");
        for cut in (0..full.len() - 1).step_by(7) {
            std::fs::write(&cut_path, &full[..cut]).unwrap();
            let err = validate_whisper(&cut_path).expect_err("a cut file must not validate");
            assert!(err.to_string().contains("cut.bin"), "{err}");
        }
    }

    #[test]
    fn foreign_files_are_not_ggml() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.gguf");
        std::fs::write(&p, b"GGUF\x03\x00\x00\x00rest").unwrap();
        let err = inspect(&p).unwrap_err();
        assert!(
            matches!(err, ModelError::NotGgml { .. }) && err.to_string().contains("GGUF"),
            "{err}"
        );
        std::fs::write(&p, b"").unwrap();
        assert!(matches!(
            inspect(&p).unwrap_err(),
            ModelError::NotGgml { .. }
        ));
    }
}
