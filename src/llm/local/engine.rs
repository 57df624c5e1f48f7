//! The worker's engine: loading the model, the prefix cache of attention states, prompts,
//! prefill, and the ways a generation starts (a new request, a draft made in the pause, a
//! paused answer resumed).

use super::*;

impl Engine {
    pub(super) fn load(cfg: &LocalLlmConfig) -> Result<Self, LlmError> {
        let fail = |reason: String| LlmError::Load {
            path: cfg.path.display().to_string(),
            reason,
        };
        let mut file = std::fs::File::open(&cfg.path).map_err(|e| fail(e.to_string()))?;
        let content = gguf_file::Content::read(&mut file)
            .map_err(|e| fail(format!("not a GGUF file: {e}")))?;
        let arch = content
            .metadata
            .get("general.architecture")
            .and_then(|v| v.to_string().ok())
            .cloned()
            .unwrap_or_default();
        if arch != "llama" {
            return Err(fail(format!(
                "architecture `{arch}` is not supported (the embedded backend runs llama-architecture GGUF models; serve others through an OpenAI-compatible endpoint)"
            )));
        }
        let tokenizer = gguf_tokenizer::from_metadata(&content.metadata).map_err(fail)?;
        let source = content
            .metadata
            .get("tokenizer.chat_template")
            .and_then(|v| v.to_string().ok())
            .cloned()
            .unwrap_or_else(|| CHATML.to_string());
        let token = |key: &str| {
            content
                .metadata
                .get(key)
                .and_then(|v| v.to_u32().ok())
                .and_then(|id| tokenizer.tokenizer.id_to_token(id))
                .unwrap_or_default()
        };
        let template = ChatTemplate::new(
            &source,
            &token("tokenizer.ggml.bos_token_id"),
            &token("tokenizer.ggml.eos_token_id"),
        )
        .map_err(fail)?;
        let context = content
            .metadata
            .get("llama.context_length")
            .and_then(|v| v.to_u32().ok())
            .map(|c| c as usize)
            .unwrap_or(2048)
            .min(MAX_POSITIONS);
        let weights = llama::load(content, &mut file).map_err(|e| fail(e.to_string()))?;
        Ok(Engine {
            weights,
            tokenizer,
            template,
            context,
            cache: Vec::new(),
            drafts: Vec::new(),
            begun: std::collections::VecDeque::new(),
            cache_entries: cfg.cache_entries,
            clock: 0,
            generated: Default::default(),
            grammars: None,
        })
    }

    /// The grammars over this model's vocabulary (built once).
    pub(super) fn grammars(&mut self) -> Result<Arc<Grammars>, LlmError> {
        if let Some(g) = &self.grammars {
            return Ok(g.clone());
        }
        let started = Instant::now();
        let g = Arc::new(
            Grammars::new(
                self.tokenizer.vocab_bytes.clone(),
                &self.tokenizer.stop_ids,
                self.tokenizer.tokenizer.clone(),
            )
            .map_err(|e| LlmError::Compute(format!("tool-call grammar: {e}")))?,
        );
        tracing::info!(
            ms = started.elapsed().as_millis() as u64,
            "built the tool-call grammars over the vocabulary"
        );
        self.grammars = Some(g.clone());
        Ok(g)
    }

    pub(super) fn encode(&self, text: &str) -> Result<Vec<u32>, LlmError> {
        self.tokenizer
            .tokenizer
            .encode_fast(text, false)
            .map(|e| e.get_ids().to_vec())
            .map_err(|e| LlmError::Compute(format!("tokenizer: {e}")))
    }

    /// The cached state sharing the longest token prefix with `tokens` (at most all but the
    /// last token, so at least one is left to run), as a fresh model and the number of tokens it
    /// covers. An entry that goes on differently (an earlier answer's state, whose text the
    /// next prompt quotes with another ending; a question drafted from a partial transcript) is
    /// cut back to where they part, when the model allows it.
    pub(super) fn start_from(&mut self, tokens: &[u32]) -> (Model, usize) {
        self.clock += 1;
        let clock = self.clock;
        let limit = tokens.len().saturating_sub(1);
        let best = self
            .cache
            .iter_mut()
            .map(|e| {
                let shared = common_prefix(&e.tokens, tokens).min(limit);
                (e, shared)
            })
            .filter(|(e, shared)| {
                *shared >= MIN_SHARED_PREFIX
                    && (*shared == e.tokens.len() || matches!(e.model, Model::Own(_)))
            })
            .max_by_key(|(_, shared)| *shared);
        if let Some((e, shared)) = best {
            let mut model = e.model.clone();
            if shared == e.tokens.len() || model.truncate(shared) {
                e.used = clock;
                return (model, shared);
            }
        }
        (self.weights.clone(), 0)
    }

    /// Keeps `model`'s state after `tokens`. With voxd's own forward pass a kept state serves
    /// every prefix of its tokens ([`Engine::start_from`] cuts it back), so a state that is a
    /// prefix of the new one is dropped, and a new one that is a prefix of a kept one is not
    /// kept: one entry per conversation, however many turns it has had. Least recently used
    /// entries go first once there are `cache_entries` or [`CACHE_TOKENS`] tokens between them.
    pub(super) fn remember(&mut self, tokens: &[u32], model: &Model) {
        if self.cache_entries == 0 || tokens.len() > CACHE_TOKENS {
            return;
        }
        let cuttable = |m: &Model| matches!(m, Model::Own(_));
        let covered = self
            .cache
            .iter()
            .any(|e| e.tokens == tokens || (cuttable(&e.model) && e.tokens.starts_with(tokens)));
        if covered {
            return;
        }
        if cuttable(model) {
            self.cache.retain(|e| !tokens.starts_with(&e.tokens));
        }
        self.clock += 1;
        while !self.cache.is_empty()
            && (self.cache.len() >= self.cache_entries
                || self.cache.iter().map(|e| e.tokens.len()).sum::<usize>() + tokens.len()
                    > CACHE_TOKENS)
        {
            if let Some(oldest) = self
                .cache
                .iter()
                .enumerate()
                .min_by_key(|(_, e)| e.used)
                .map(|(i, _)| i)
            {
                self.cache.swap_remove(oldest);
            }
        }
        self.cache.push(CacheEntry {
            tokens: tokens.to_vec(),
            model: model.clone(),
            used: self.clock,
        });
    }

    /// Token counts of the rendered prompt at each cache point that is a clean token prefix.
    pub(super) fn boundaries(&self, req: &GenerateRequest, tokens: &[u32]) -> Vec<usize> {
        let (messages, points) = (&req.messages, &req.cache_points);
        let offered = req.offers_tools().then_some((&req.tools, &req.tool_choice));
        let mut out = Vec::new();
        for &n in points {
            if n == 0 || n >= messages.len() {
                continue;
            }
            let Ok(text) = self
                .template
                .render_with_tools(&messages[..n], offered, false)
            else {
                continue;
            };
            let Ok(prefix) = self.encode(&text) else {
                continue;
            };
            if prefix.len() < tokens.len() && tokens.starts_with(&prefix) {
                out.push(prefix.len());
            }
        }
        out.sort_unstable();
        out.dedup();
        out
    }

    /// Runs `tokens[from..to]` through `model` (whose cache covers `..from`); returns the logits
    /// after the last one. Stops early (None) if `cancelled` says so.
    pub(super) fn run(
        model: &mut Model,
        tokens: &[u32],
        from: usize,
        to: usize,
        cancelled: &dyn Fn() -> bool,
    ) -> Result<Option<Tensor>, LlmError> {
        let mut pos = from;
        let mut logits = None;
        while pos < to {
            if cancelled() {
                return Ok(None);
            }
            let end = (pos + PREFILL_CHUNK).min(to);
            let input = Tensor::new(&tokens[pos..end], &Device::Cpu)
                .and_then(|t| t.unsqueeze(0))
                .map_err(compute)?;
            logits = Some(model.forward(&input, pos).map_err(compute)?);
            pos = end;
        }
        Ok(logits)
    }

    /// Prefills `tokens` up to each boundary (caching the state there) and then to the end.
    pub(super) fn prefill(
        &mut self,
        tokens: &[u32],
        boundaries: &[usize],
        cancelled: &dyn Fn() -> bool,
    ) -> Result<Option<(Model, Tensor, usize)>, LlmError> {
        let (mut model, cached) = self.start_from(tokens);
        let mut pos = cached;
        let mut logits = None;
        let ahead: Vec<usize> = boundaries.iter().copied().filter(|&b| b > pos).collect();
        for b in ahead {
            match Self::run(&mut model, tokens, pos, b, cancelled)? {
                Some(l) => logits = Some(l),
                None => return Ok(None),
            }
            pos = b;
            self.remember(&tokens[..b], &model);
        }
        if pos < tokens.len() {
            match Self::run(&mut model, tokens, pos, tokens.len(), cancelled)? {
                Some(l) => logits = Some(l),
                None => return Ok(None),
            }
        }
        Ok(logits.map(|l| (model, l, cached)))
    }

    /// Prefills `req`'s prompt and decodes its first slice of tokens; or, when the same request
    /// was drafted ahead of time, sends the draft's text at once and continues from there.
    pub(super) fn generate(
        &mut self,
        req: GenerateRequest,
        tx: &mpsc::Sender<Result<LlmEvent, LlmError>>,
        submitted: Instant,
        others_waiting: &dyn Fn() -> bool,
    ) -> Result<Slice, LlmError> {
        let started = Instant::now();
        let prompt = self.prompt(&req)?;
        let key = DraftKey::of(&req);
        if let Some(i) = self
            .drafts
            .iter()
            .position(|d| d.tokens == prompt.tokens && d.key == key)
        {
            let draft = self.drafts.remove(i);
            crate::metrics::global().llm_drafts.inc("used");
            return self.resume(draft, tx, submitted, others_waiting);
        }
        if self.begun.len() >= BEGUN_KEPT {
            self.begun.pop_front();
        }
        self.begun
            .push_back((prompt_hash(&prompt.tokens, &key), Instant::now()));
        if !self.drafts.is_empty() {
            tracing::debug!(
                drafts = self.drafts.len(),
                prompt_tokens = prompt.tokens.len(),
                same_prompt = self.drafts.iter().any(|d| d.tokens == prompt.tokens),
                "no draft for this request"
            );
        }
        let cancelled = || tx.is_closed();
        let Some(mut generation) = self.begin(req, prompt, submitted, started, &cancelled)? else {
            return Ok(Slice::Finished);
        };
        // The first slice ends at OPENING_TOKENS, so that the rest queues as an answer under
        // way (and stops counting as opening work) even when no other answer waits.
        generation.pause_after = Some(OPENING_TOKENS);
        self.decode(generation, tx, others_waiting)
    }

    /// Renders `req`'s prompt (with the start of a call it must make) into tokens.
    pub(super) fn prompt(&mut self, req: &GenerateRequest) -> Result<Prompt, LlmError> {
        let offered = req.offers_tools();
        let mut prompt = self
            .template
            .render_with_tools(
                &req.messages,
                offered.then_some((&req.tools, &req.tool_choice)),
                true,
            )
            .map_err(LlmError::Invalid)?;
        // A call the model must make: the prompt ends where the call begins.
        let mut call = None;
        if offered
            && matches!(
                req.tool_choice,
                ToolChoice::Required | ToolChoice::Function(_)
            )
        {
            let grammars = self.grammars()?;
            let (writer, prefix) = CallWriter::start(&grammars, &req.tools, &req.tool_choice)
                .map_err(|e| LlmError::Invalid(format!("tools: {e}")))?;
            prompt.push_str(&prefix);
            call = Some(writer);
        }
        // A small model answering after a function's result tends to echo the result's tags:
        // the opening one is dropped from the answer, the closing one ends it.
        let unwrap_result = call.is_none() && prompt.contains(RESULT_OPEN);
        let tokens = self.encode(&prompt)?;
        if tokens.is_empty() {
            return Err(LlmError::Invalid("the prompt is empty".into()));
        }
        if tokens.len() + req.max_tokens > self.context {
            return Err(LlmError::ContextOverflow {
                prompt: tokens.len(),
                max_tokens: req.max_tokens,
                context: self.context,
            });
        }
        Ok(Prompt {
            tokens,
            call,
            unwrap_result,
        })
    }

    /// Prefills the prompt (from the longest cached prefix); the generation ready for its first
    /// token, or `None` when cancelled meanwhile.
    pub(super) fn begin(
        &mut self,
        req: GenerateRequest,
        prompt: Prompt,
        submitted: Instant,
        started: Instant,
        cancelled: &dyn Fn() -> bool,
    ) -> Result<Option<Generation>, LlmError> {
        let Prompt {
            tokens,
            call,
            unwrap_result,
        } = prompt;
        let mut stop = req.stop.clone();
        if unwrap_result {
            stop.push(RESULT_CLOSE.to_string());
        }
        let boundaries = self.boundaries(&req, &tokens);
        let Some((model, logits, cached)) = self.prefill(&tokens, &boundaries, cancelled)? else {
            return Ok(None);
        };
        let temperature = (req.temperature > 0.0).then_some(req.temperature as f64);
        // May call a tool: keep the state before the first token, to write the call from there.
        let offered = req.offers_tools();
        let watch =
            (offered && call.is_none() && req.tool_choice == ToolChoice::Auto).then(|| Watch {
                model: model.clone(),
                logits: logits.clone(),
                tools: req.tools.clone(),
            });
        Ok(Some(Generation {
            call,
            watch,
            model,
            logits,
            sampler: LogitsProcessor::new(
                req.seed.unwrap_or(299_792_458),
                temperature,
                req.top_p.map(f64::from),
            ),
            prompt_len: tokens.len(),
            prompt: tokens,
            cached,
            max_tokens: req.max_tokens,
            repeat_penalty: req.repeat_penalty,
            generated: Vec::new(),
            emitted: String::new(),
            scanner: StopScanner::new(&stop),
            unwrap_result,
            submitted,
            started,
            prefill_ms: started.elapsed().as_secs_f64() * 1e3,
            first_token_ms: 0.0,
            first_at: None,
            pause_after: None,
            drafted: 0,
        }))
    }

    /// Drafts the first `tokens` tokens of `req` and keeps them (with the state to continue) for
    /// the [`Engine::generate`] of the same request. Nothing is sent anywhere.
    /// A request that comes for the worker meanwhile (`answers_waiting`) ends the draft early:
    /// it is kept with the tokens it has, and the request most likely claims it at once.
    pub(super) fn speculate(
        &mut self,
        req: GenerateRequest,
        tokens: usize,
        requested: Instant,
        given_up: &dyn Fn() -> bool,
        answers_waiting: &dyn Fn() -> bool,
    ) -> Result<(), LlmError> {
        let started = Instant::now();
        let prompt = self.prompt(&req)?;
        let key = DraftKey::of(&req);
        if self
            .drafts
            .iter()
            .any(|d| d.tokens == prompt.tokens && d.key == key)
        {
            return Ok(());
        }
        // Under load a draft can queue behind its own answer, which went ahead of it: too late.
        let hash = prompt_hash(&prompt.tokens, &key);
        if self
            .begun
            .iter()
            .any(|&(h, at)| h == hash && at >= requested)
        {
            tracing::debug!("the answer began before its draft; not drafting");
            crate::metrics::global().llm_drafts.inc("late");
            return Ok(());
        }
        let prompt_tokens = prompt.tokens.clone();
        let Some(mut g) = self.begin(req, prompt, started, started, given_up)? else {
            return Ok(());
        };
        if given_up() || tokens == 0 {
            return Ok(());
        }
        g.pause_after = Some(tokens);
        // The draft's events wait here: at most one per token, a call and the end.
        let (tx, mut rx) = mpsc::channel(tokens + 8);
        let slice = self.decode(g, &tx, answers_waiting)?;
        drop(tx);
        let mut events = Vec::new();
        while let Ok(ev) = rx.try_recv() {
            match ev {
                Ok(ev) => events.push(ev),
                Err(e) => return Err(e),
            }
        }
        let generation = match slice {
            Slice::Paused(g) => Some(g),
            Slice::Finished => None,
        };
        // Oldest first out: at most MAX_DRAFTS, holding at most MAX_DRAFT_TOKENS of attention
        // state between them (~45 KB per token for SmolLM2-135M), however long the prompts.
        while !self.drafts.is_empty()
            && (self.drafts.len() >= MAX_DRAFTS
                || self.drafts.iter().map(|d| d.tokens.len()).sum::<usize>() + prompt_tokens.len()
                    > MAX_DRAFT_TOKENS)
        {
            self.drafts.remove(0);
        }
        crate::metrics::global().llm_drafts.inc("made");
        self.drafts.push(Draft {
            tokens: prompt_tokens,
            key,
            events,
            generation,
            made_at: Instant::now(),
        });
        Ok(())
    }

    /// Sends a draft's events (the time to its first token counted from this request) and
    /// continues its generation.
    pub(super) fn resume(
        &mut self,
        draft: Draft,
        tx: &mpsc::Sender<Result<LlmEvent, LlmError>>,
        submitted: Instant,
        others_waiting: &dyn Fn() -> bool,
    ) -> Result<Slice, LlmError> {
        let waited_ms = submitted.elapsed().as_secs_f64() * 1e3;
        for ev in draft.events {
            let ev = match ev {
                LlmEvent::Done { finish, mut usage } => {
                    usage.queue_ms = waited_ms;
                    usage.prefill_ms = 0.0;
                    usage.first_token_ms = waited_ms;
                    usage.drafted_tokens = usage.completion_tokens;
                    LlmEvent::Done { finish, usage }
                }
                ev => ev,
            };
            if tx.blocking_send(Ok(ev)).is_err() {
                return Ok(Slice::Finished); // cancelled
            }
        }
        let Some(mut g) = draft.generation else {
            return Ok(Slice::Finished);
        };
        g.pause_after = None;
        g.drafted = g.generated.len();
        // Decoding speed counts the draft's decoding time, not the wait since.
        if let Some(first) = g.first_at {
            let decoding = draft.made_at.saturating_duration_since(first);
            g.first_at = Instant::now().checked_sub(decoding);
        }
        g.submitted = submitted;
        g.started = Instant::now();
        g.prefill_ms = 0.0;
        g.first_token_ms = waited_ms;
        self.decode(*g, tx, others_waiting)
    }
}
