//! One transcription on a worker's state: the prompt, the decoding parameters, whisper.cpp's
//! run, and its segments and tokens turned into a transcript.

use super::*;

/// Checks a prompt before it reaches whisper.cpp: no NUL bytes (C strings), at most
/// [`MAX_PROMPT_BYTES`].
pub fn check_prompt(prompt: &str) -> Result<(), String> {
    if prompt.contains('\0') {
        return Err("the prompt contains a NUL character".into());
    }
    if prompt.len() > MAX_PROMPT_BYTES {
        return Err(format!(
            "the prompt is {} bytes long; the limit is {MAX_PROMPT_BYTES}",
            prompt.len()
        ));
    }
    Ok(())
}

/// Checks a language code: 2 to 8 ASCII letters (`en`, `yue`), or `auto`.
pub fn check_language(language: &str) -> Result<(), String> {
    if (2..=8).contains(&language.len()) && language.chars().all(|c| c.is_ascii_alphabetic()) {
        Ok(())
    } else {
        Err(format!(
            "`{}` is not a language code",
            language.escape_debug()
        ))
    }
}

/// The prompt's tokens, at most the last `n_text_ctx / 2` as whisper.cpp keeps them.
pub(super) fn prompt_tokens(ctx: &WhisperContext, prompt: &str) -> Result<Vec<i32>, AsrError> {
    check_prompt(prompt).map_err(AsrError::InvalidPrompt)?;
    // A token covers at least one byte, so this bound always holds them all (whisper-rs reads a
    // negative count, which whisper.cpp returns when the buffer is too small, as a length).
    let mut tokens = ctx
        .tokenize(prompt, prompt.len() + 16)
        .map_err(|e| AsrError::InvalidPrompt(format!("the prompt cannot be tokenized: {e}")))?;
    let keep = (ctx.n_text_ctx().max(2) / 2) as usize;
    if tokens.len() > keep {
        tokens.drain(..tokens.len() - keep);
    }
    Ok(tokens)
}

pub(super) fn run(
    state: &mut WhisperState,
    req: &Request,
    cfg: &WhisperConfig,
    threads: usize,
    abort: &AbortWhen,
    model: &Model,
) -> Result<Transcript, AsrError> {
    let started = Instant::now();
    let audio = Duration::from_secs_f64(req.samples.len() as f64 / 16_000.0);
    let padded;
    let samples: &[f32] = if req.samples.len() < MIN_SAMPLES {
        let mut p = req.samples.clone();
        p.resize(MIN_SAMPLES, 0.0);
        padded = p;
        &padded
    } else {
        &req.samples
    };

    let language = req.language.clone().unwrap_or_else(|| cfg.language.clone());
    let language = if model.multilingual {
        language
    } else {
        "en".to_string()
    };
    check_language(&language).map_err(AsrError::InvalidLanguage)?;
    let prompt = req.prompt.as_deref().or(cfg.prompt.as_deref());
    let tokens = match prompt.filter(|p| !p.is_empty()) {
        Some(p) => prompt_tokens(&model.ctx, p)?,
        None => Vec::new(),
    };
    let mut params = decoding_params(
        cfg,
        threads,
        &language,
        &tokens,
        samples.len(),
        audio,
        model,
    );

    let bias = req
        .hints
        .as_deref()
        .filter(|h| cfg.hints && !h.is_empty())
        .map(|h| super::bias::Bias::new(&model.ctx, h))
        .filter(|b| !b.is_empty());
    if let Some(b) = &bias {
        // SAFETY: the callback reads the `Bias` through the pointer only during `full` below,
        // and `bias` outlives it.
        #[allow(unsafe_code)]
        unsafe {
            params.set_filter_logits_callback(Some(super::bias::Bias::filter));
            params.set_filter_logits_callback_user_data(
                b as *const super::bias::Bias as *mut std::ffi::c_void,
            );
        }
    }

    // whisper-rs's `set_abort_callback_safe` hands whisper.cpp a pointer to a boxed `dyn FnMut`
    // but reads it back as the closure type itself; pass our own context directly.
    // SAFETY: the callback only reads the `AbortWhen` through the pointer, and `abort` outlives
    // the call to `full` below.
    #[allow(unsafe_code)]
    unsafe {
        params.set_abort_callback(Some(should_abort));
        params.set_abort_callback_user_data(abort as *const AbortWhen as *mut std::ffi::c_void);
    }
    if let Err(e) = state.full(params, samples) {
        if abort.stopping.load(Ordering::Acquire) {
            return Err(AsrError::ShuttingDown);
        }
        if abort.now() {
            debug!("transcription aborted (a final waits or the caller left)");
            return Err(AsrError::Superseded);
        }
        return Err(AsrError::Engine(e.to_string()));
    }

    let (text, segments) = segments_of(state, audio)?;
    Ok(Transcript {
        text: text.trim().to_string(),
        segments,
        language,
        audio,
        queue_wait: Duration::ZERO,
        compute: started.elapsed(),
    })
}

/// How whisper.cpp decodes: greedy or beam search, threads, the language, the encoder window
/// for this much audio, a token bound, and the prompt's tokens.
fn decoding_params<'a>(
    cfg: &WhisperConfig,
    threads: usize,
    language: &'a str,
    tokens: &'a [i32],
    n_samples: usize,
    audio: Duration,
    model: &Model,
) -> FullParams<'a, 'a> {
    let strategy = if cfg.beam_size > 1 {
        SamplingStrategy::BeamSearch {
            beam_size: cfg.beam_size as i32,
            patience: -1.0,
        }
    } else {
        SamplingStrategy::Greedy { best_of: 1 }
    };
    let mut params = FullParams::new(strategy);
    params.set_n_threads(threads.max(1) as i32);
    // whisper-rs leaks the C string of every language it is given (and whisper.cpp's default is
    // already English), so only other languages are set.
    if language != "en" {
        params.set_language(Some(language));
    }
    params.set_translate(false);
    params.set_no_context(true);
    // Always decode with timestamp tokens, even when the caller wants no segments: without them
    // tiny.en loops ("She had your dark suit… She had your dark suit…") on short clips with a
    // trimmed window (measured on LDC93S1); with them it ends the segment cleanly.
    params.set_no_timestamps(false);
    params.set_print_special(false);
    params.set_print_progress(false);
    params.set_print_realtime(false);
    params.set_print_timestamps(false);
    params.set_suppress_blank(true);
    params.set_audio_ctx(audio_ctx_for(cfg.audio_ctx, n_samples, model.n_audio_ctx));
    // Speech runs at ~3 words (~4 tokens) a second; far beyond that the decoder is repeating
    // itself. The bound is per segment, so long audio is unaffected.
    params.set_max_tokens((audio.as_secs_f64().min(30.0) * 8.0).ceil() as i32 + 16);
    // Prompt tokens, not `set_initial_prompt`: that one panics on a NUL byte and leaks its C
    // string on every call.
    if !tokens.is_empty() {
        params.set_tokens(tokens);
    }

    params
}

/// The transcript's text and segments, with a segment that repeats the one before dropped.
fn segments_of(state: &WhisperState, audio: Duration) -> Result<(String, Vec<Segment>), AsrError> {
    let mut segments = Vec::new();
    let mut text = String::new();
    for seg in state.as_iter() {
        let t = seg
            .to_str_lossy()
            .map_err(|e| AsrError::Engine(e.to_string()))?;
        let t = collapse_loops(&t);
        if segments
            .last()
            .is_some_and(|prev: &Segment| is_repeat(&prev.text, &t))
        {
            debug!(text = %t, "dropped a repeated segment");
            continue;
        }
        text.push_str(&t);
        segments.push(Segment {
            start_s: seg.start_timestamp() as f64 / 100.0,
            end_s: (seg.end_timestamp() as f64 / 100.0).min(audio.as_secs_f64().max(0.01)),
            text: t.trim().to_string(),
            no_speech_prob: seg.no_speech_probability(),
        });
    }
    Ok((text, segments))
}

/// Whether `next` repeats `previous` word for word (ignoring case and punctuation). With a trimmed
/// window tiny.en sometimes decodes a short clip twice ("And so my fellow Americans. And so my
/// fellow Americans." for a 3.2 s clip with 0.3 s of silence before it; measured at
/// `audio_ctx` 320, not at 400). A person repeating a whole phrase of two or more words as its own
/// segment is far rarer than that loop, so the repeat is dropped.
pub(super) fn is_repeat(previous: &str, next: &str) -> bool {
    let next = crate::wer::normalize(next);
    next.len() >= 2 && crate::wer::normalize(previous) == next
}

/// `text` with a run of words repeated over and over kept once: tiny.en sometimes loops within a
/// segment on a short turn ("ask not" heard as `"S NOT" "S NOT" "S NOT" …`, seen in the demo's
/// browser test; "Besses from Paul on it. Besses from Paul on it. …"). A phrase of two to six
/// words said three times running, or one word four times, is taken for a loop; people rarely
/// say either.
pub(super) fn collapse_loops(text: &str) -> String {
    let words: Vec<&str> = text.split_whitespace().collect();
    if words.len() < 4 {
        return text.to_string();
    }
    let key: Vec<String> = words
        .iter()
        .map(|w| {
            w.chars()
                .filter(|c| c.is_alphanumeric())
                .flat_map(char::to_lowercase)
                .collect()
        })
        .collect();
    let mut out: Vec<&str> = Vec::with_capacity(words.len());
    let mut i = 0;
    'next: while i < words.len() {
        for n in 1..=6 {
            let times = if n == 1 { 4 } else { 3 };
            if key[i..].len() < n * times || key[i..i + n].iter().all(String::is_empty) {
                continue;
            }
            let mut count = 1;
            while key.len() >= i + (count + 1) * n
                && key[i + count * n..i + (count + 1) * n] == key[i..i + n]
            {
                count += 1;
            }
            if count >= times {
                out.extend(&words[i..i + n]);
                i += count * n;
                continue 'next;
            }
        }
        out.push(words[i]);
        i += 1;
    }
    let collapsed = out.join(" ");
    if collapsed.len() == text.trim().len() {
        return text.to_string();
    }
    // Keep the segment's leading space, as whisper writes it.
    let lead = if text.starts_with(' ') { " " } else { "" };
    format!("{lead}{collapsed}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_phrase_looped_within_a_segment_is_kept_once() {
        assert_eq!(
            collapse_loops(r#" "S NOT" "S NOT" "S NOT" "S NOT" "S What your country"#),
            r#" "S NOT" "S What your country"#
        );
        assert_eq!(
            collapse_loops(
                "Besses from Paul on it. Besses from Paul on it. Besses from Paul on it."
            ),
            "Besses from Paul on it."
        );
        // Speech is left alone: a word said twice or three times, a phrase said twice.
        for said in [
            " No, no, no, not that one.",
            " Very very good.",
            " Ask not what your country can do for you, ask what you can do for your country.",
            " I said it, I said it.",
        ] {
            assert_eq!(collapse_loops(said), said);
        }
    }

    #[test]
    fn repeated_segments_are_recognised() {
        assert!(is_repeat(
            "And so my fellow Americans.",
            " and so, my fellow Americans"
        ));
        assert!(!is_repeat("And so my fellow Americans.", "Ask not."));
        assert!(!is_repeat("No.", "No."));
    }

    #[test]
    fn audio_ctx_is_trimmed_for_short_audio_only() {
        assert_eq!(
            audio_ctx_for(AudioCtx::Auto, 16_000 * 11, 1500),
            550 + CTX_MARGIN
        );
        assert_eq!(audio_ctx_for(AudioCtx::Auto, 16_000 * 2, 1500), CTX_FLOOR);
        assert_eq!(audio_ctx_for(AudioCtx::Auto, 16_000 * 29, 1500), 0);
        assert_eq!(audio_ctx_for(AudioCtx::Auto, 16_000 * 60, 1500), 0);
        assert_eq!(audio_ctx_for(AudioCtx::Full, 16_000, 1500), 0);
        assert_eq!(audio_ctx_for(AudioCtx::Fixed(3000), 16_000, 1500), 1500);
        assert_eq!("auto".parse::<AudioCtx>().unwrap(), AudioCtx::Auto);
        assert_eq!("768".parse::<AudioCtx>().unwrap(), AudioCtx::Fixed(768));
        assert!("9999".parse::<AudioCtx>().is_err());
    }
}
