//! Phonemes from espeak-ng, the phonemiser Piper voices were trained with.
//!
//! libespeak-ng is opened at run time (Debian: `libespeak-ng1`), so building voxd needs no
//! espeak headers and a server without a voice never touches it. espeak-ng keeps global state
//! and is not thread-safe: every call holds one process-wide lock. A call takes well under a
//! millisecond per clause, so the lock is never contended for long.
//!
//! This is the one module of voxd besides the whisper callback that uses `unsafe`: four C
//! functions, called with NUL-terminated strings that outlive the calls.
#![allow(unsafe_code)]

use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::sync::Mutex;

use super::TtsError;

/// Library names tried, in order.
const LIBRARIES: [&str; 2] = ["libespeak-ng.so.1", "libespeak-ng.so"];
/// `AUDIO_OUTPUT_SYNCHRONOUS`: espeak makes no sound of its own.
const AUDIO_OUTPUT_SYNCHRONOUS: c_int = 2;
/// `espeakCHARS_UTF8`.
const CHARS_UTF8: c_int = 1;
/// `espeakPHONEMES_IPA`: phonemes as IPA characters in UTF-8.
const PHONEMES_IPA: c_int = 0x02;

type InitializeFn = unsafe extern "C" fn(c_int, c_int, *const c_char, c_int) -> c_int;
type SetVoiceFn = unsafe extern "C" fn(*const c_char) -> c_int;
type TextToPhonemesFn = unsafe extern "C" fn(*mut *const c_void, c_int, c_int) -> *const c_char;

struct Espeak {
    // Keeps the library mapped while the function pointers below are in use.
    _lib: libloading::Library,
    set_voice: SetVoiceFn,
    text_to_phonemes: TextToPhonemesFn,
    voice: Option<String>,
}

static ESPEAK: Mutex<Option<Espeak>> = Mutex::new(None);

fn load() -> Result<Espeak, TtsError> {
    let mut last = String::new();
    for name in LIBRARIES {
        // SAFETY: loading libespeak-ng runs its initialisers, which have no preconditions.
        let lib = match unsafe { libloading::Library::new(name) } {
            Ok(lib) => lib,
            Err(e) => {
                last = e.to_string();
                continue;
            }
        };
        // SAFETY: the symbols are looked up with the signatures of espeak-ng's speak_lib.h.
        let (init, set_voice, text_to_phonemes) = unsafe {
            let init: InitializeFn = *lib
                .get::<InitializeFn>(b"espeak_Initialize\0")
                .map_err(|e| TtsError::Phonemes(e.to_string()))?;
            let set_voice: SetVoiceFn = *lib
                .get::<SetVoiceFn>(b"espeak_SetVoiceByName\0")
                .map_err(|e| TtsError::Phonemes(e.to_string()))?;
            let ttp: TextToPhonemesFn = *lib
                .get::<TextToPhonemesFn>(b"espeak_TextToPhonemes\0")
                .map_err(|e| TtsError::Phonemes(e.to_string()))?;
            (init, set_voice, ttp)
        };
        // SAFETY: a null path selects espeak-ng's installed data; no buffer, no options.
        let rate = unsafe { init(AUDIO_OUTPUT_SYNCHRONOUS, 0, std::ptr::null(), 0) };
        if rate <= 0 {
            return Err(TtsError::Phonemes(
                "espeak-ng could not start: its data (espeak-ng-data) is missing".into(),
            ));
        }
        return Ok(Espeak {
            _lib: lib,
            set_voice,
            text_to_phonemes,
            voice: None,
        });
    }
    Err(TtsError::Phonemes(format!(
        "libespeak-ng is not installed ({last}); install it (Debian: `apt-get install \
         libespeak-ng1`) or start voxd with --no-tts"
    )))
}

/// Checks that espeak-ng can be loaded and knows `voice`.
pub fn check(voice: &str) -> Result<(), TtsError> {
    phonemize("a", voice).map(|_| ())
}

/// The IPA phonemes of `text` in espeak voice `voice` (`en-us`), one string per clause as
/// espeak-ng splits it; clause punctuation is not included.
pub fn phonemize(text: &str, voice: &str) -> Result<Vec<String>, TtsError> {
    let text = CString::new(text.replace('\0', " ")).expect("NULs were replaced");
    let voice_c = CString::new(voice)
        .map_err(|_| TtsError::Phonemes(format!("bad espeak voice name {voice:?}")))?;
    let mut guard = ESPEAK.lock().unwrap_or_else(|p| p.into_inner());
    if guard.is_none() {
        *guard = Some(load()?);
    }
    let espeak = guard.as_mut().expect("loaded above");
    if espeak.voice.as_deref() != Some(voice) {
        // SAFETY: `voice_c` is NUL-terminated and lives across the call.
        let status = unsafe { (espeak.set_voice)(voice_c.as_ptr()) };
        if status != 0 {
            return Err(TtsError::Phonemes(format!(
                "espeak-ng has no voice `{voice}`"
            )));
        }
        espeak.voice = Some(voice.to_string());
    }
    let mut clauses = Vec::new();
    let mut ptr = text.as_ptr() as *const c_void;
    // espeak advances `ptr` clause by clause and sets it to null at the end of the text.
    while !ptr.is_null() {
        // SAFETY: `ptr` points into `text`, which is NUL-terminated and outlives the loop; the
        // returned string is espeak's static buffer, copied before the next call.
        let out = unsafe { (espeak.text_to_phonemes)(&mut ptr, CHARS_UTF8, PHONEMES_IPA) };
        if out.is_null() {
            break;
        }
        // SAFETY: espeak returns a NUL-terminated string.
        let s = unsafe { CStr::from_ptr(out) }
            .to_string_lossy()
            .into_owned();
        let s = s.trim().to_string();
        if !s.is_empty() {
            clauses.push(s);
        }
    }
    Ok(clauses)
}
