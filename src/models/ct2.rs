//! Reading a CTranslate2 `model.bin` (format version 6), the format faster-whisper ships.
//!
//! Layout (little endian): u32 version, u16-length name, u32 revision, u32 variable count; each
//! variable: u16-length NUL-terminated name, u8 rank, u32 dims, u8 dtype, u32 byte count, bytes.
//! Then u32 alias count and (alias, target) name pairs. Every length is checked against the file,
//! so a truncated or damaged file gives [`ModelError::Corrupt`], never a panic.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use half::f16;

use super::ModelError;

/// Element type of a CTranslate2 variable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DType {
    F32,
    I8,
    I16,
    I32,
    F16,
    BF16,
}

impl DType {
    fn from_code(code: u8) -> Option<Self> {
        Some(match code {
            0 => DType::F32,
            1 => DType::I8,
            2 => DType::I16,
            3 => DType::I32,
            4 => DType::F16,
            5 => DType::BF16,
            _ => return None,
        })
    }

    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            DType::I8 => 1,
            DType::I16 | DType::F16 | DType::BF16 => 2,
            DType::F32 | DType::I32 => 4,
        }
    }
}

/// One stored variable: a view into the file's bytes.
#[derive(Debug, Clone)]
pub struct Variable {
    pub shape: Vec<usize>,
    pub dtype: DType,
    offset: usize,
    len: usize,
}

/// A parsed `model.bin` held in memory.
pub struct Ct2Model {
    path: PathBuf,
    pub spec: String,
    pub revision: u32,
    data: Vec<u8>,
    vars: BTreeMap<String, Variable>,
    aliases: BTreeMap<String, String>,
}

struct Cursor<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&end| end <= self.data.len())
            .ok_or_else(|| {
                format!(
                    "file ends at byte {} while {} more were expected",
                    self.data.len(),
                    n
                )
            })?;
        let s = &self.data[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, String> {
        Ok(u16::from_le_bytes(
            self.take(2)?.try_into().expect("2 bytes"),
        ))
    }
    fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_le_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }
    fn name(&mut self) -> Result<String, String> {
        let n = self.u16()? as usize;
        let raw = self.take(n)?;
        let raw = raw.strip_suffix(&[0]).unwrap_or(raw);
        String::from_utf8(raw.to_vec()).map_err(|_| "a variable name is not UTF-8".to_string())
    }
}

impl Ct2Model {
    /// Reads and indexes `path`.
    pub fn open(path: &Path) -> Result<Self, ModelError> {
        let data = std::fs::read(path).map_err(|e| ModelError::io(path, e))?;
        Self::parse(data, path)
    }

    /// Indexes an in-memory `model.bin`; `path` names it in errors.
    pub fn parse(data: Vec<u8>, path: &Path) -> Result<Self, ModelError> {
        let corrupt = |reason: String| ModelError::Corrupt {
            path: path.to_path_buf(),
            reason,
        };
        let (spec, revision, vars, aliases) = {
            let mut c = Cursor {
                data: &data,
                pos: 0,
            };
            let version = c.u32().map_err(corrupt)?;
            if !(2..=6).contains(&version) {
                return Err(corrupt(format!(
                    "unsupported CTranslate2 model version {version} (expected 2 to 6)"
                )));
            }
            let spec = c.name().map_err(corrupt)?;
            let revision = c.u32().map_err(corrupt)?;
            let count = c.u32().map_err(corrupt)?;
            let mut vars = BTreeMap::new();
            for _ in 0..count {
                let name = c.name().map_err(corrupt)?;
                let rank = c.u8().map_err(corrupt)? as usize;
                let mut shape = Vec::with_capacity(rank);
                for _ in 0..rank {
                    shape.push(c.u32().map_err(corrupt)? as usize);
                }
                let code = c.u8().map_err(corrupt)?;
                let dtype = DType::from_code(code)
                    .ok_or_else(|| corrupt(format!("variable {name} has unknown dtype {code}")))?;
                let len = c.u32().map_err(corrupt)? as usize;
                let elems = shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
                if elems.and_then(|n| n.checked_mul(dtype.size())) != Some(len) {
                    return Err(corrupt(format!(
                        "variable {name}: shape {shape:?} of {dtype:?} does not match its {len} bytes"
                    )));
                }
                let offset = c.pos;
                c.take(len).map_err(corrupt)?;
                vars.insert(
                    name,
                    Variable {
                        shape,
                        dtype,
                        offset,
                        len,
                    },
                );
            }
            let mut aliases = BTreeMap::new();
            if c.pos < data.len() {
                let n = c.u32().map_err(corrupt)?;
                for _ in 0..n {
                    let alias = c.name().map_err(corrupt)?;
                    let target = c.name().map_err(corrupt)?;
                    aliases.insert(alias, target);
                }
            }
            (spec, revision, vars, aliases)
        };
        Ok(Ct2Model {
            path: path.to_path_buf(),
            spec,
            revision,
            data,
            vars,
            aliases,
        })
    }

    /// Looks a variable up by name (following aliases).
    pub fn get(&self, name: &str) -> Option<&Variable> {
        let name = self.aliases.get(name).map(String::as_str).unwrap_or(name);
        self.vars.get(name)
    }

    /// Looks a variable up, or says which one is missing.
    pub fn require(&self, name: &str) -> Result<&Variable, ModelError> {
        self.get(name).ok_or_else(|| ModelError::Corrupt {
            path: self.path.clone(),
            reason: format!("variable {name} is missing"),
        })
    }

    /// The variable names, in sorted order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.vars.keys().map(String::as_str)
    }

    /// Raw bytes of a variable.
    pub fn bytes(&self, v: &Variable) -> &[u8] {
        &self.data[v.offset..v.offset + v.len]
    }

    /// A variable's values widened to f32 (float variables only).
    pub fn to_f32(&self, name: &str) -> Result<Vec<f32>, ModelError> {
        let v = self.require(name)?;
        let b = self.bytes(v);
        Ok(match v.dtype {
            DType::F32 => b
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes")))
                .collect(),
            DType::F16 => b
                .chunks_exact(2)
                .map(|c| f16::from_le_bytes(c.try_into().expect("2 bytes")).to_f32())
                .collect(),
            DType::BF16 => b
                .chunks_exact(2)
                .map(|c| half::bf16::from_le_bytes(c.try_into().expect("2 bytes")).to_f32())
                .collect(),
            other => {
                return Err(ModelError::Corrupt {
                    path: self.path.clone(),
                    reason: format!("variable {name} is {other:?}, expected a float type"),
                })
            }
        })
    }

    /// An integer scalar (such as `encoder/num_heads`).
    pub fn scalar_int(&self, name: &str) -> Result<i64, ModelError> {
        let v = self.require(name)?;
        let b = self.bytes(v);
        let bad = || ModelError::Corrupt {
            path: self.path.clone(),
            reason: format!("variable {name} is not an integer scalar"),
        };
        if !v.shape.is_empty() {
            return Err(bad());
        }
        Ok(match v.dtype {
            DType::I8 => b[0] as i8 as i64,
            DType::I16 => i16::from_le_bytes(b.try_into().map_err(|_| bad())?) as i64,
            DType::I32 => i32::from_le_bytes(b.try_into().map_err(|_| bad())?) as i64,
            _ => return Err(bad()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put_name(out: &mut Vec<u8>, name: &str) {
        out.extend_from_slice(&((name.len() + 1) as u16).to_le_bytes());
        out.extend_from_slice(name.as_bytes());
        out.push(0);
    }

    /// A tiny valid model.bin with one f16 matrix, one i16 scalar and an alias.
    pub(crate) fn tiny_model() -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&6u32.to_le_bytes());
        put_name(&mut out, "WhisperSpec");
        out.extend_from_slice(&3u32.to_le_bytes());
        out.extend_from_slice(&2u32.to_le_bytes());
        put_name(&mut out, "m/weight");
        out.push(2);
        out.extend_from_slice(&2u32.to_le_bytes());
        out.extend_from_slice(&3u32.to_le_bytes());
        out.push(4);
        out.extend_from_slice(&12u32.to_le_bytes());
        for i in 0..6 {
            out.extend_from_slice(&f16::from_f32(i as f32 * 0.5).to_le_bytes());
        }
        put_name(&mut out, "m/num_heads");
        out.push(0);
        out.push(2);
        out.extend_from_slice(&2u32.to_le_bytes());
        out.extend_from_slice(&6i16.to_le_bytes());
        out.extend_from_slice(&1u32.to_le_bytes());
        put_name(&mut out, "m/alias");
        put_name(&mut out, "m/weight");
        out
    }

    #[test]
    fn parses_variables_scalars_and_aliases() {
        let m = Ct2Model::parse(tiny_model(), Path::new("model.bin")).unwrap();
        assert_eq!(m.spec, "WhisperSpec");
        assert_eq!(m.revision, 3);
        assert_eq!(m.require("m/weight").unwrap().shape, vec![2, 3]);
        assert_eq!(
            m.to_f32("m/alias").unwrap(),
            vec![0.0, 0.5, 1.0, 1.5, 2.0, 2.5]
        );
        assert_eq!(m.scalar_int("m/num_heads").unwrap(), 6);
        assert!(m.to_f32("m/num_heads").is_err());
    }

    #[test]
    fn every_truncation_is_an_error_naming_the_file() {
        let full = tiny_model();
        // Cutting inside the alias table still leaves a readable model only at the exact end of
        // the variables; every other cut must fail cleanly.
        for cut in 0..full.len() {
            match Ct2Model::parse(full[..cut].to_vec(), Path::new("/models/model.bin")) {
                Ok(m) => assert!(m.get("m/weight").is_some() && cut >= full.len() - 30),
                Err(e) => assert!(e.to_string().contains("/models/model.bin"), "{e}"),
            }
        }
    }
}
