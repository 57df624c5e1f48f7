//! Finding the knowledge base's words the voice says wrongly (`voxd kb pronounce`): each word is
//! spoken by the voice and heard back by voxd's own recogniser, without the knowledge base's
//! hints; a word that does not come back is tried again in plainer respellings (letters as they
//! sound, syllables apart, the stress marked) until one does, which is suggested as a
//! [lexicon](super::lexicon) entry.
//!
//! "Comes back" is judged by sound, not spelling: what was heard has the word's phonetic key
//! ([`crate::grounding::repair::key`]), so "Trevithick" heard as "Trevithic" and "Polwenna" as
//! "Paul when a" are right (the recogniser cannot know how a name is spelled); "Siân Trevithick"
//! heard as one word, or "Penhallow" as "and below", are not.

use crate::asr::{Asr, AsrError, Request};
use crate::grounding::repair;

use super::{SpeakRequest, Tts, TtsError};

/// Most respellings tried for one word.
pub const MAX_TRIES: usize = 6;

/// Why a word could not be checked.
#[derive(Debug, thiserror::Error)]
pub enum PronounceError {
    #[error("the voice failed: {0}")]
    Voice(#[from] TtsError),
    #[error("the recogniser failed: {0}")]
    Hearing(#[from] AsrError),
    #[error("resampling the voice's audio: {0}")]
    Resample(String),
}

/// How one word came out.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Pronunciation {
    pub word: String,
    /// What was heard when the word was said as written (after the current lexicon), after the
    /// carrier phrase.
    pub heard: String,
    pub comes_back: bool,
    /// A respelling that comes back, when the word does not.
    pub suggestion: Option<String>,
    /// Each respelling tried, with what was heard.
    pub tried: Vec<(String, String)>,
}

/// Says `word` with `voice` and hears it back; when it does not come back, tries respellings.
pub async fn check(
    tts: &dyn Tts,
    asr: &dyn Asr,
    voice: &str,
    word: &str,
) -> Result<Pronunciation, PronounceError> {
    let heard = say_and_hear(tts, asr, voice, word).await?;
    let mut out = Pronunciation {
        word: word.to_string(),
        comes_back: comes_back(word, &heard),
        heard,
        suggestion: None,
        tried: Vec::new(),
    };
    if out.comes_back {
        return Ok(out);
    }
    for respelled in respellings(word).into_iter().take(MAX_TRIES) {
        let heard = say_and_hear(tts, asr, voice, &respelled).await?;
        let ok = comes_back(word, &heard);
        out.tried.push((respelled.clone(), heard));
        if ok {
            out.suggestion = Some(respelled);
            break;
        }
    }
    Ok(out)
}

async fn say_and_hear(
    tts: &dyn Tts,
    asr: &dyn Asr,
    voice: &str,
    text: &str,
) -> Result<String, PronounceError> {
    let speech = tts
        .speak(SpeakRequest {
            text: format!("{CARRIER} {text}."),
            voice: voice.to_string(),
            speed: 1.0,
            urgent: false,
        })
        .await?;
    let samples = crate::audio::resample::resample_all(&speech.samples, speech.sample_rate, 16_000)
        .map_err(|e| PronounceError::Resample(e.to_string()))?;
    let heard = asr.transcribe(Request::new(samples)).await?.text;
    Ok(without_carrier(&heard))
}

/// Said before each word, so the recogniser hears it in a sentence (a lone word is often heard
/// as a loop of itself) and the voice does not say it as a title.
const CARRIER: &str = "The word is";

/// What was heard after the carrier, up to the carrier heard again (a short clip is sometimes
/// heard as a loop of itself); all of it when the carrier itself was misheard.
fn without_carrier(heard: &str) -> String {
    let words = crate::wer::normalize(heard);
    let carrier = crate::wer::normalize(CARRIER);
    let Some(rest) = words.strip_prefix(carrier.as_slice()) else {
        return words.join(" ");
    };
    let end = (0..rest.len())
        .find(|&i| rest[i..].starts_with(&carrier))
        .unwrap_or(rest.len());
    rest[..end].join(" ")
}

/// The phonetic key of a text's words run together (so "Polwenna" and "Paul when a" match).
fn sound(words: &[String]) -> String {
    repair::key(&plain_letters(&words.concat()))
}

/// Whether what was heard sounds like `word`: the same phonetic key, in at least as many words
/// (a first name and surname heard as one word were run together).
pub fn comes_back(word: &str, heard: &str) -> bool {
    let said = crate::wer::normalize(word);
    let got = crate::wer::normalize(heard);
    if said.is_empty() || got.len() < said.len() {
        return false;
    }
    said == got || sound(&said) == sound(&got)
}

/// A letter without its accent (`â` → `a`), for words the voice and the key read as English.
fn plain_letters(word: &str) -> String {
    word.chars()
        .map(|c| match c {
            'à' | 'á' | 'â' | 'ä' | 'ã' | 'å' => 'a',
            'è' | 'é' | 'ê' | 'ë' => 'e',
            'ì' | 'í' | 'î' | 'ï' => 'i',
            'ò' | 'ó' | 'ô' | 'ö' | 'õ' => 'o',
            'ù' | 'ú' | 'û' | 'ü' => 'u',
            'ç' => 'c',
            'ñ' => 'n',
            'ŵ' => 'w',
            'ŷ' | 'ÿ' => 'y',
            c => c,
        })
        .collect()
}

/// Respellings to try, plainest first: letters as they sound, then the syllables apart, then
/// each syllable stressed in turn. Each is different from the word and from the others.
pub fn respellings(word: &str) -> Vec<String> {
    let words: Vec<String> = word.split_whitespace().map(|w| w.to_lowercase()).collect();
    let sounded: Vec<String> = words.iter().map(|w| as_it_sounds(w)).collect();
    let syllabled: Vec<Vec<String>> = sounded.iter().map(|w| syllables(w)).collect();
    let mut out: Vec<String> = Vec::new();
    let mut push = |s: String| {
        if s.to_lowercase() != word.to_lowercase() && !out.contains(&s) && !s.trim().is_empty() {
            out.push(s);
        }
    };
    // Several words: a comma keeps the voice from running them together.
    push(sounded.join(if words.len() > 1 { ", " } else { " " }));
    push(
        syllabled
            .iter()
            .map(|s| s.join(" "))
            .collect::<Vec<_>>()
            .join(", "),
    );
    let longest = syllabled.iter().map(Vec::len).max().unwrap_or(0);
    for stressed in 0..longest.min(3) {
        let line = syllabled
            .iter()
            .map(|s| {
                s.iter()
                    .enumerate()
                    .map(|(i, syl)| {
                        if i == stressed && s.len() > 1 {
                            syl.to_uppercase()
                        } else {
                            syl.clone()
                        }
                    })
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .collect::<Vec<_>>()
            .join(", ");
        push(line);
    }
    out
}

/// A word spelled the way an English reader says it: accents as vowel sounds, `ph` as `f`, a
/// hard `c` as `k` and a soft one as `s`, a final `y` after a consonant as `ee`.
fn as_it_sounds(word: &str) -> String {
    let mut s = String::new();
    for c in word.chars() {
        match c {
            'â' | 'á' | 'à' => s.push_str("ah"),
            'ê' | 'é' | 'è' => s.push_str("ay"),
            'î' | 'í' | 'ì' => s.push_str("ee"),
            'ô' | 'ó' | 'ò' => s.push_str("oh"),
            'û' | 'ú' | 'ù' | 'ŵ' => s.push_str("oo"),
            c => s.push_str(&plain_letters(&c.to_string())),
        }
    }
    let mut s = s.replace("ph", "f").replace("ck", "k").replace("qu", "kw");
    let chars: Vec<char> = s.chars().collect();
    let mut hard = String::new();
    for (i, &c) in chars.iter().enumerate() {
        let next = chars.get(i + 1).copied().unwrap_or(' ');
        if c == 'c' && matches!(next, 'e' | 'i' | 'y') {
            hard.push('s');
        } else if c == 'c' && next != 'h' {
            hard.push('k');
        } else {
            hard.push(c);
        }
    }
    s = hard;
    let vowel = |c: char| matches!(c, 'a' | 'e' | 'i' | 'o' | 'u');
    let n = s.chars().count();
    if n > 2 && s.ends_with('y') && !s.chars().nth(n - 2).is_some_and(vowel) {
        s.pop();
        s.push_str("ee");
    }
    s
}

/// A word cut into spoken syllables: a break before each consonant that starts a new vowel
/// group ("morvoren" → "mor vo ren").
fn syllables(word: &str) -> Vec<String> {
    let vowel = |c: char| matches!(c, 'a' | 'e' | 'i' | 'o' | 'u' | 'y');
    let chars: Vec<char> = word.chars().collect();
    let mut out = Vec::new();
    let mut current = String::new();
    let mut seen_vowel = false;
    for (i, &c) in chars.iter().enumerate() {
        let next_is_vowel = chars.get(i + 1).is_some_and(|&n| vowel(n));
        let rest_has_vowel = chars[i + 1..].iter().any(|&n| vowel(n));
        if seen_vowel && !vowel(c) && next_is_vowel && rest_has_vowel && current.len() > 1 {
            out.push(std::mem::take(&mut current));
            seen_vowel = false;
        }
        current.push(c);
        seen_vowel |= vowel(c);
    }
    if !current.is_empty() {
        out.push(current);
    }
    out
}

/// The knowledge base's terms worth checking: names and words of at most three words, in the
/// vocabulary's order (names first), at most `limit`.
pub fn words_to_check(vocabulary: &[String], limit: usize) -> Vec<String> {
    vocabulary
        .iter()
        .filter(|t| {
            let n = t.split_whitespace().count();
            // "St", "In": abbreviations and short words are not names to respell.
            let worded = t
                .split_whitespace()
                .any(|w| w.chars().filter(|c| c.is_alphabetic()).count() > 2);
            (1..=3).contains(&n) && worded
        })
        .take(limit)
        .cloned()
        .collect()
}

/// The words that did not come back, as a lexicon file (`--tts-lexicon`): each with the
/// respelling that did, or commented out for the operator to respell by hand; a header says how
/// many of how many.
pub fn lexicon_text(checked: &[Pronunciation]) -> String {
    let wrong: Vec<&Pronunciation> = checked.iter().filter(|p| !p.comes_back).collect();
    let mut out = format!(
        "# voxd kb pronounce: {} of {} words did not come back as said; use with --tts-lexicon\n",
        wrong.len(),
        checked.len()
    );
    for p in wrong {
        let heard = p.heard.replace('#', "");
        out.push_str(&match &p.suggestion {
            Some(s) => format!("{} = {s}    # heard \"{heard}\"\n", p.word),
            None => format!(
                "# {} = ?    # heard \"{heard}\"; no respelling tried came back\n",
                p.word
            ),
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_word_comes_back_when_it_sounds_the_same() {
        assert!(comes_back("Trevithick", "Trevithic."));
        assert!(comes_back("ferry", "Ferry!"));
        assert!(comes_back("Siân", "Sian"));
        assert!(comes_back("Polwenna", "Paul when a."));
        assert!(!comes_back("Penhallow", "and below."));
        assert!(!comes_back("Morvoren", "More a ran."));
        assert!(!comes_back("Siân Trevithick", "Shantrevithick"));
        assert!(!comes_back("pasty", ""));
    }

    #[test]
    fn the_carrier_and_a_loop_of_it_are_cut_from_what_was_heard() {
        assert_eq!(without_carrier("The word is Fridays."), "fridays");
        assert_eq!(
            without_carrier("The word is gig growing. The word is gig growing. The word"),
            "gig growing"
        );
        assert_eq!(without_carrier("Word is Piran."), "word is piran");
    }

    #[test]
    fn respellings_say_the_letters_as_they_sound_then_apart_then_stressed() {
        assert_eq!(syllables("morvoren"), ["mor", "vo", "ren"]);
        assert_eq!(syllables("crab"), ["crab"]);
        assert_eq!(as_it_sounds("siân"), "siahn");
        assert_eq!(as_it_sounds("pharmacy"), "farmasee");
        let r = respellings("Morvoren");
        assert_eq!(
            r,
            ["mor vo ren", "MOR vo ren", "mor VO ren", "mor vo REN"],
            "{r:?}"
        );
        // A first name and surname are kept apart.
        let r = respellings("Siân Trevithick");
        assert_eq!(r[0], "siahn, trevithik");
        assert!(r.iter().all(|s| s.to_lowercase() != "siân trevithick"));
    }

    #[test]
    fn the_lexicon_text_reads_back_as_a_lexicon() {
        let p = |word: &str, ok: bool, suggestion: Option<&str>| Pronunciation {
            word: word.into(),
            heard: "and # below".into(),
            comes_back: ok,
            suggestion: suggestion.map(String::from),
            tried: Vec::new(),
        };
        let text = lexicon_text(&[
            p("harbour", true, None),
            p("Penhallow", false, Some("pen HAL low")),
            p("St Austell", false, None),
        ]);
        assert!(
            text.starts_with("# voxd kb pronounce: 2 of 3 words"),
            "{text}"
        );
        let lexicon = super::super::lexicon::Lexicon::parse(&text, "out").unwrap();
        assert_eq!(lexicon.len(), 1);
        assert_eq!(lexicon.respell("at Penhallow."), "at pen HAL low.");
    }

    #[test]
    fn only_short_terms_with_letters_are_checked() {
        let vocab: Vec<String> = [
            "Kettle and Crab",
            "Opening hours in the summer",
            "2024",
            "St",
            "gig",
        ]
        .map(String::from)
        .to_vec();
        assert_eq!(words_to_check(&vocab, 10), ["Kettle and Crab", "gig"]);
        assert_eq!(words_to_check(&vocab, 1), ["Kettle and Crab"]);
    }
}
