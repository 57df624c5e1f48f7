//! Opus, the codec of WebRTC audio: 48 kHz, 20 ms frames. libopus is opened at run time
//! (Debian: `libopus0`), as libespeak-ng is for the voice, so building voxd needs no codec
//! sources or headers and a server that never takes a WebRTC call never touches it.
//!
//! Mono in and out: a stereo stream is mixed down by the decoder. A lost packet is concealed
//! (`decode(None)`), which is what a jitter buffer asks for when a packet does not arrive.
//!
//! Besides the espeak-ng binding and the whisper callback, this is the one module of voxd that
//! uses `unsafe`: libopus's create, encode, decode, control and destroy functions, each called
//! with buffers whose lengths are passed alongside.
#![allow(unsafe_code)]

use std::ffi::{c_char, c_int, c_void, CStr};
use std::sync::OnceLock;

/// WebRTC's Opus clock rate.
pub const RATE: u32 = 48_000;
/// Samples in one 20 ms frame at [`RATE`].
pub const FRAME: usize = 960;
/// Most samples one packet decodes to: 120 ms at 48 kHz.
const MAX_PACKET_SAMPLES: usize = 5760;
/// Largest encoded packet accepted or produced (RFC 6716 recommends 1275 bytes per frame).
const MAX_PACKET_BYTES: usize = 4000;
/// `OPUS_APPLICATION_VOIP`.
const APPLICATION_VOIP: c_int = 2048;
/// `OPUS_SET_BITRATE_REQUEST`.
const SET_BITRATE: c_int = 4002;

/// Library names tried, in order.
const LIBRARIES: [&str; 2] = ["libopus.so.0", "libopus.so"];

/// What went wrong with Opus.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OpusError {
    #[error("libopus is not installed ({0}); install it (Debian: `apt-get install libopus0`)")]
    Unavailable(String),
    #[error("opus: {0}")]
    Codec(String),
    #[error("opus frames are 2.5, 5, 10, 20, 40 or 60 ms: {0} samples at 48 kHz is none of them")]
    FrameSize(usize),
}

type DecoderCreate = unsafe extern "C" fn(i32, c_int, *mut c_int) -> *mut c_void;
type DecodeFloat =
    unsafe extern "C" fn(*mut c_void, *const u8, i32, *mut f32, c_int, c_int) -> c_int;
type EncoderCreate = unsafe extern "C" fn(i32, c_int, c_int, *mut c_int) -> *mut c_void;
type EncodeFloat = unsafe extern "C" fn(*mut c_void, *const f32, c_int, *mut u8, i32) -> i32;
type EncoderCtl = unsafe extern "C" fn(*mut c_void, c_int, ...) -> c_int;
type Destroy = unsafe extern "C" fn(*mut c_void);
type StrError = unsafe extern "C" fn(c_int) -> *const c_char;
type Version = unsafe extern "C" fn() -> *const c_char;

struct Library {
    // Keeps the library mapped while the function pointers below are in use.
    _lib: libloading::Library,
    decoder_create: DecoderCreate,
    decode_float: DecodeFloat,
    decoder_destroy: Destroy,
    encoder_create: EncoderCreate,
    encode_float: EncodeFloat,
    encoder_ctl: EncoderCtl,
    encoder_destroy: Destroy,
    strerror: StrError,
    version: Version,
}

fn library() -> Result<&'static Library, OpusError> {
    static LIB: OnceLock<Result<Library, OpusError>> = OnceLock::new();
    LIB.get_or_init(open).as_ref().map_err(Clone::clone)
}

fn open() -> Result<Library, OpusError> {
    let mut last = String::new();
    for name in LIBRARIES {
        // SAFETY: loading libopus runs no initialisers with preconditions.
        let lib = match unsafe { libloading::Library::new(name) } {
            Ok(lib) => lib,
            Err(e) => {
                last = e.to_string();
                continue;
            }
        };
        let missing = |e: libloading::Error| OpusError::Unavailable(e.to_string());
        // SAFETY: each symbol is looked up with its signature from libopus's opus.h.
        unsafe {
            return Ok(Library {
                decoder_create: *lib.get(b"opus_decoder_create\0").map_err(missing)?,
                decode_float: *lib.get(b"opus_decode_float\0").map_err(missing)?,
                decoder_destroy: *lib.get(b"opus_decoder_destroy\0").map_err(missing)?,
                encoder_create: *lib.get(b"opus_encoder_create\0").map_err(missing)?,
                encode_float: *lib.get(b"opus_encode_float\0").map_err(missing)?,
                encoder_ctl: *lib.get(b"opus_encoder_ctl\0").map_err(missing)?,
                encoder_destroy: *lib.get(b"opus_encoder_destroy\0").map_err(missing)?,
                strerror: *lib.get(b"opus_strerror\0").map_err(missing)?,
                version: *lib.get(b"opus_get_version_string\0").map_err(missing)?,
                _lib: lib,
            });
        }
    }
    Err(OpusError::Unavailable(last))
}

impl Library {
    fn error(&self, code: c_int) -> OpusError {
        // SAFETY: opus_strerror returns a static string for any code.
        let text = unsafe { CStr::from_ptr((self.strerror)(code)) };
        OpusError::Codec(text.to_string_lossy().into_owned())
    }
}

/// libopus's version ("libopus 1.3.1"), or why it cannot be used.
pub fn version() -> Result<String, OpusError> {
    let lib = library()?;
    // SAFETY: a static string.
    let text = unsafe { CStr::from_ptr((lib.version)()) };
    Ok(text.to_string_lossy().into_owned())
}

/// Decodes one stream's packets to mono samples at 48 kHz.
pub struct Decoder {
    lib: &'static Library,
    state: *mut c_void,
    /// Samples of the last packet, the length a concealed one takes.
    last_frame: usize,
}

// SAFETY: a decoder's state belongs to this value alone; libopus keeps no thread-local state.
unsafe impl Send for Decoder {}

impl Decoder {
    pub fn new() -> Result<Self, OpusError> {
        let lib = library()?;
        let mut err: c_int = 0;
        // SAFETY: a valid rate and channel count, and a place for the error code.
        let state = unsafe { (lib.decoder_create)(RATE as i32, 1, &mut err) };
        if state.is_null() || err != 0 {
            return Err(lib.error(err));
        }
        Ok(Decoder {
            lib,
            state,
            last_frame: FRAME,
        })
    }

    /// The samples of `packet`, or, for `None` (a packet that never came), a concealment of
    /// the length of the last one.
    pub fn decode(&mut self, packet: Option<&[u8]>) -> Result<Vec<f32>, OpusError> {
        if packet.is_some_and(|p| p.len() > MAX_PACKET_BYTES) {
            return Err(OpusError::Codec("packet too large".into()));
        }
        let mut pcm = vec![0f32; MAX_PACKET_SAMPLES];
        let (data, len, frame) = match packet {
            Some(p) => (p.as_ptr(), p.len() as i32, MAX_PACKET_SAMPLES),
            None => (std::ptr::null(), 0, self.last_frame),
        };
        // SAFETY: `data` holds `len` bytes (or is null for concealment); `pcm` has room for
        // `frame` ≤ MAX_PACKET_SAMPLES mono samples.
        let n = unsafe {
            (self.lib.decode_float)(self.state, data, len, pcm.as_mut_ptr(), frame as c_int, 0)
        };
        if n < 0 {
            return Err(self.lib.error(n));
        }
        pcm.truncate(n as usize);
        if packet.is_some() {
            self.last_frame = pcm.len().max(1);
        }
        Ok(pcm)
    }
}

impl Drop for Decoder {
    fn drop(&mut self) {
        // SAFETY: created by opus_decoder_create, destroyed once.
        unsafe { (self.lib.decoder_destroy)(self.state) }
    }
}

/// Encodes mono 48 kHz speech, one frame at a time.
pub struct Encoder {
    lib: &'static Library,
    state: *mut c_void,
}

// SAFETY: as for [`Decoder`].
unsafe impl Send for Encoder {}

impl Encoder {
    /// A speech encoder at `bitrate` bits per second.
    pub fn new(bitrate: i32) -> Result<Self, OpusError> {
        let lib = library()?;
        let mut err: c_int = 0;
        // SAFETY: a valid rate, channel count and application, and a place for the error.
        let state = unsafe { (lib.encoder_create)(RATE as i32, 1, APPLICATION_VOIP, &mut err) };
        if state.is_null() || err != 0 {
            return Err(lib.error(err));
        }
        let encoder = Encoder { lib, state };
        // SAFETY: OPUS_SET_BITRATE takes one opus_int32.
        let r = unsafe { (lib.encoder_ctl)(state, SET_BITRATE, bitrate) };
        if r != 0 {
            return Err(lib.error(r));
        }
        Ok(encoder)
    }

    /// One packet for `frame` (2.5 to 60 ms of samples at 48 kHz).
    pub fn encode(&mut self, frame: &[f32]) -> Result<Vec<u8>, OpusError> {
        if ![120, 240, 480, 960, 1920, 2880].contains(&frame.len()) {
            return Err(OpusError::FrameSize(frame.len()));
        }
        let mut out = vec![0u8; MAX_PACKET_BYTES];
        // SAFETY: `frame` holds the samples passed; `out` has MAX_PACKET_BYTES of room.
        let n = unsafe {
            (self.lib.encode_float)(
                self.state,
                frame.as_ptr(),
                frame.len() as c_int,
                out.as_mut_ptr(),
                MAX_PACKET_BYTES as i32,
            )
        };
        if n < 0 {
            return Err(self.lib.error(n));
        }
        out.truncate(n as usize);
        Ok(out)
    }
}

impl Drop for Encoder {
    fn drop(&mut self) {
        // SAFETY: created by opus_encoder_create, destroyed once.
        unsafe { (self.lib.encoder_destroy)(self.state) }
    }
}
