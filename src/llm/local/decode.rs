//! Decoding: the per-token loop of a generation (text, or a tool call under its grammar), the
//! call phases, and the end of a generation (its usage, the answer's state kept for the next
//! turn).

use super::*;

impl Engine {
    /// Feeds `text` to the model after what `g` has so far (forced, not sampled).
    pub(super) fn force(&self, g: &mut Generation, text: &str) -> Result<(), LlmError> {
        let tokens = self.encode(text)?;
        if tokens.is_empty() {
            return Ok(());
        }
        let pos = g.prompt_len + g.generated.len();
        if pos + tokens.len() >= self.context {
            return Err(LlmError::ContextOverflow {
                prompt: g.prompt_len,
                max_tokens: g.max_tokens,
                context: self.context,
            });
        }
        run_tokens(g, &tokens, pos)?;
        g.generated.extend_from_slice(&tokens);
        Ok(())
    }

    /// A call phase is complete: force what comes next, or hand the call over. True when the
    /// call is written.
    pub(super) fn next_phase(
        &self,
        g: &mut Generation,
        tx: &mpsc::Sender<Result<LlmEvent, LlmError>>,
    ) -> Result<bool, LlmError> {
        let (Some(writer), Some(grammars)) = (g.call.as_mut(), self.grammars.as_ref()) else {
            return Ok(true);
        };
        match writer
            .next(grammars)
            .map_err(|e| LlmError::Compute(format!("tool call: {e}")))?
        {
            Next::Force(text) => {
                self.force(g, &text)?;
                Ok(false)
            }
            Next::Call { name, arguments } => {
                let call = ToolCall {
                    id: new_call_id(),
                    name,
                    arguments,
                };
                let _ = tx.blocking_send(Ok(LlmEvent::ToolCall(call)));
                g.call = None;
                Ok(true)
            }
        }
    }

    /// The model began a call on its own (`tool_choice: auto`): start over from before its
    /// first token and write the call under the grammar.
    pub(super) fn begin_call(&mut self, g: &mut Generation) -> Result<(), LlmError> {
        let Some(w) = g.watch.take() else {
            return Ok(());
        };
        let grammars = self.grammars()?;
        let (writer, prefix) = CallWriter::start(&grammars, &w.tools, &ToolChoice::Required)
            .map_err(|e| LlmError::Invalid(format!("tools: {e}")))?;
        g.model = w.model;
        g.logits = w.logits;
        g.generated.clear();
        g.emitted.clear();
        g.call = Some(writer);
        self.force(g, &prefix)
    }

    /// Decodes tokens of `g` until it ends, or until it has had [`SLICE`] of the worker while
    /// other requests wait (then it is handed back, to be queued behind them).
    pub(super) fn decode(
        &mut self,
        mut g: Generation,
        tx: &mpsc::Sender<Result<LlmEvent, LlmError>>,
        others_waiting: &dyn Fn() -> bool,
    ) -> Result<Slice, LlmError> {
        let slice = Instant::now();
        let mut finish = FinishReason::Length;
        while g.generated.len() < g.max_tokens {
            let step = match self.grammars.clone().filter(|_| g.call.is_some()) {
                Some(grammars) => self.call_token(&mut g, &grammars, tx)?,
                None => self.text_token(&mut g, tx)?,
            };
            let next = match step {
                Token::Next(next) => next,
                Token::Again => continue,
                Token::End(f) => {
                    finish = f;
                    break;
                }
                Token::Cancelled => return Ok(Slice::Finished),
            };
            // The sampled token goes through the model for the next one.
            if tx.is_closed() {
                return Ok(Slice::Finished);
            }
            if g.prompt_len + g.generated.len() >= self.context {
                break;
            }
            let pos = g.prompt_len + g.generated.len() - 1;
            run_tokens(&mut g, &[next], pos)?;
            if g.generated.len() < g.max_tokens && g.should_pause(slice, others_waiting) {
                return Ok(Slice::Paused(Box::new(g)));
            }
        }
        self.finish_generation(g, tx, finish)
    }

    /// Samples the next token of a call being written under its grammar.
    fn call_token(
        &mut self,
        g: &mut Generation,
        grammars: &Arc<Grammars>,
        tx: &mpsc::Sender<Result<LlmEvent, LlmError>>,
    ) -> Result<Token, LlmError> {
        let constrained = |e| LlmError::Compute(format!("constrained decoding: {e}"));
        let row = g.logits.squeeze(0).map_err(compute)?;
        let mut logits: Vec<f32> = row.to_vec1().map_err(compute)?;
        let Some(writer) = g.call.as_mut() else {
            return Ok(Token::Again);
        };
        if let Step::Complete = writer.mask(grammars, &mut logits).map_err(constrained)? {
            return self.phase_done(g, tx);
        }
        let row = Tensor::new(logits, &Device::Cpu).map_err(compute)?;
        let next = g.sampler.sample(&row).map_err(compute)?;
        g.mark_first_token();
        let bytes = self
            .tokenizer
            .vocab_bytes
            .get(next as usize)
            .cloned()
            .unwrap_or_default();
        let step = g
            .call
            .as_mut()
            .map(|w| w.accept(grammars, next, &bytes))
            .transpose()
            .map_err(constrained)?;
        if matches!(step, Some(Step::Complete)) {
            return self.phase_done(g, tx);
        }
        self.accept(g, next);
        Ok(Token::Next(next))
    }

    /// A call's phase is complete: the call ends the generation when it is written.
    fn phase_done(
        &mut self,
        g: &mut Generation,
        tx: &mpsc::Sender<Result<LlmEvent, LlmError>>,
    ) -> Result<Token, LlmError> {
        Ok(if self.next_phase(g, tx)? {
            Token::End(FinishReason::ToolCalls)
        } else {
            Token::Again
        })
    }

    /// Samples the next token of text, and sends what it completes (held back while it could
    /// still be the start of a call or of an echoed tool result).
    fn text_token(
        &mut self,
        g: &mut Generation,
        tx: &mpsc::Sender<Result<LlmEvent, LlmError>>,
    ) -> Result<Token, LlmError> {
        let mut row = g.logits.squeeze(0).map_err(compute)?;
        if g.repeat_penalty > 1.0 && !g.generated.is_empty() {
            let recent = &g.generated[g.generated.len().saturating_sub(64)..];
            row = candle_transformers::utils::apply_repeat_penalty(&row, g.repeat_penalty, recent)
                .map_err(compute)?;
        }
        let next = g.sampler.sample(&row).map_err(compute)?;
        g.mark_first_token();
        if self.tokenizer.stop_ids.contains(&next) {
            return Ok(Token::End(FinishReason::Stop));
        }
        self.accept(g, next);
        let text = self
            .tokenizer
            .tokenizer
            .decode(&g.generated, true)
            .map_err(|e| LlmError::Compute(format!("tokenizer: {e}")))?;
        // Wait for the rest of a character split across tokens.
        if text.ends_with('\u{fffd}')
            || text.len() <= g.emitted.len()
            || !text.starts_with(&g.emitted)
        {
            return Ok(Token::Next(next));
        }
        let mut piece = text[g.emitted.len()..].to_string();
        g.emitted = text;
        if g.watch.is_some() {
            // Held until it is clear whether the model is starting a call.
            let so_far = g.emitted.trim_start();
            if so_far.starts_with(CALL_OPEN) {
                self.begin_call(g)?;
                return Ok(Token::Again);
            }
            if CALL_OPEN.starts_with(so_far) {
                piece.clear();
            } else {
                g.watch = None;
                piece = g.emitted.clone();
            }
        }
        if g.unwrap_result && !piece.is_empty() {
            piece = g.unwrap_tool_result();
        }
        let (out, stopped) = g.scanner.push(&piece);
        if !out.is_empty() && tx.blocking_send(Ok(LlmEvent::Delta(out))).is_err() {
            return Ok(Token::Cancelled);
        }
        if stopped {
            return Ok(Token::End(FinishReason::Stop));
        }
        Ok(Token::Next(next))
    }

    /// Counts a sampled token as generated.
    fn accept(&self, g: &mut Generation, next: u32) {
        g.generated.push(next);
        self.generated
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// Sends what is held back and the usage, and keeps the answer's state for the next turn.
    fn finish_generation(
        &mut self,
        mut g: Generation,
        tx: &mpsc::Sender<Result<LlmEvent, LlmError>>,
        finish: FinishReason,
    ) -> Result<Slice, LlmError> {
        if g.watch.take().is_some() && !g.emitted.is_empty() {
            // It ended while the text could still have been a call's start: it was not.
            let (out, _) = g.scanner.push(&g.emitted.clone());
            if !out.is_empty() && tx.blocking_send(Ok(LlmEvent::Delta(out))).is_err() {
                return Ok(Slice::Finished);
            }
        }
        let rest = g.scanner.finish();
        if finish == FinishReason::Length && !rest.is_empty() {
            let _ = tx.blocking_send(Ok(LlmEvent::Delta(rest)));
        }
        let usage = g.usage();
        tracing::debug!(
            prompt = usage.prompt_tokens,
            cached = usage.cached_tokens,
            completion = usage.completion_tokens,
            queue_ms = usage.queue_ms as u64,
            prefill_ms = usage.prefill_ms as u64,
            first_token_ms = usage.first_token_ms as u64,
            tps = usage.tokens_per_second as u64,
            "generation done"
        );
        let _ = tx.blocking_send(Ok(LlmEvent::Done { finish, usage }));
        if g.call.is_none() && finish != FinishReason::ToolCalls {
            self.remember_answer(&g);
        }
        Ok(Slice::Finished)
    }

    /// Keeps the state after an answer: the next turn's prompt quotes the answer after this
    /// prompt, so it needs to run only what follows (the end of the answer and the new question)
    /// instead of the whole conversation again.
    pub(super) fn remember_answer(&mut self, g: &Generation) {
        let Some(len) = g.model.positions() else {
            return;
        };
        let mut tokens = g.prompt.clone();
        tokens.extend_from_slice(&g.generated);
        if len > g.prompt.len() && len <= tokens.len() {
            tokens.truncate(len);
            self.remember(&tokens, &g.model);
        }
    }
}

/// What one decoding step gave.
enum Token {
    /// A token was sampled (and accepted): run it through the model.
    Next(u32),
    /// Nothing to run: sample again (a call's phase changed, or a call began).
    Again,
    /// The generation ends.
    End(FinishReason),
    /// The listener went away.
    Cancelled,
}

impl Generation {
    /// Notes the first token's time.
    fn mark_first_token(&mut self) {
        if self.first_at.is_none() {
            self.first_token_ms = self.submitted.elapsed().as_secs_f64() * 1e3;
            self.first_at = Some(Instant::now());
        }
    }

    /// The piece to send when the text may open with an echoed `<tool_response>` (after a tool
    /// result a small model sometimes repeats the tag): held while it could be the tag, the
    /// tag dropped once it is.
    fn unwrap_tool_result(&mut self) -> String {
        let so_far = self.emitted.trim_start();
        if let Some(rest) = so_far.strip_prefix(RESULT_OPEN) {
            if rest.trim().is_empty() {
                return String::new();
            }
            self.unwrap_result = false;
            return rest.trim_start().to_string();
        }
        if RESULT_OPEN.starts_with(so_far) {
            return String::new();
        }
        self.unwrap_result = false;
        self.emitted.clone()
    }

    /// Token counts and timings of the finished generation.
    fn usage(&self) -> Usage {
        let decode_s = self
            .first_at
            .map(|t| t.elapsed().as_secs_f64())
            .unwrap_or(0.0);
        let n = self.generated.len();
        Usage {
            prompt_tokens: self.prompt_len,
            completion_tokens: n,
            cached_tokens: self.cached,
            queue_ms: (self.started - self.submitted).as_secs_f64() * 1e3,
            prefill_ms: self.prefill_ms,
            first_token_ms: self.first_token_ms,
            tokens_per_second: if decode_s > 0.0 && n > 1 {
                (n - 1) as f64 / decode_s
            } else {
                0.0
            },
            drafted_tokens: self.drafted,
        }
    }
}
