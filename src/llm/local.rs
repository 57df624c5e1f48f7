//! The embedded LLM: a GGUF llama-architecture model (default SmolLM2-135M-Instruct, Q4_1) run
//! with [`super::llama`] (voxd's 8-bit kernels) on a dedicated worker thread.
//!
//! Prefix caching: the attention (KV) state after a prompt prefix is kept (up to 16 entries and
//! [`CACHE_TOKENS`] tokens between them, least recently used dropped first; a state that another
//! extends is dropped, so a conversation holds one entry). A request whose tokens start with a
//! cached prefix clones that state (tensors are shared, not copied) and only runs the rest of its
//! prompt. Callers mark
//! useful prefixes with [`GenerateRequest::cache_points`] or warm one ahead of time with
//! [`Llm::prefill`] (the realtime session does this while the person is still talking).
//!
//! Answers take turns: a generation decodes for [`SLICE`] at most while other generations wait,
//! then goes to the back of the queue with its state, so answers in progress do not hold back a
//! new question's first token (they slow down instead; greedy answers are unchanged). New
//! questions queue first, then answers still on their first phrase ([`OPENING_TOKENS`]), then
//! longer answers.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use candle_core::quantized::gguf_file;
use candle_core::{Device, Tensor};
use candle_transformers::generation::LogitsProcessor;
use futures::future::BoxFuture;
use tokenizers::Tokenizer;
use tokio::sync::mpsc;

use super::constrain::{CallWriter, Grammars, Next, Step};
use super::gguf_tokenizer::{self, GgufTokenizer};
use super::llama::{self, Model};
use super::stop::StopScanner;
use super::template::{ChatTemplate, CHATML};
use super::{FinishReason, GenerateRequest, Llm, LlmError, LlmEvent, LlmStream, Usage};
use crate::llm::tool_prompt::{CALL_OPEN, RESULT_CLOSE, RESULT_OPEN};
use crate::prompt::ChatMessage;
use crate::tools::{new_call_id, ToolCall, ToolChoice, ToolSet};
use crate::workers::WorkerPool;

/// The forward pass's rotary tables cover this many positions.
const MAX_POSITIONS: usize = llama::MAX_POSITIONS;
/// Prompt tokens per forward pass while prefilling; cancellation is checked between chunks (a
/// full chunk takes ~5 s on 2 cores for SmolLM2-135M).
const PREFILL_CHUNK: usize = 512;
/// Requests that may wait for the model.
const QUEUE: usize = 64;
/// An answer with fewer tokens than this goes ahead of longer ones when it queues for the model:
/// new questions and answers still on their first phrase (what a listener is waiting for) before
/// answers whose speech is already playing (the voice keeps seconds of it ahead).
const OPENING_TOKENS: usize = 16;
/// Tokens the prefix cache's states may hold between them (~45 KB of attention state per token
/// for SmolLM2-135M: ~190 MB at most).
const CACHE_TOKENS: usize = 4096;
/// Answers begun whose prompts are remembered, so that a late draft of one is not made.
const BEGUN_KEPT: usize = 16;
/// How long one generation decodes while other generations wait before it lets them in. Answers
/// take turns on the one worker, so a new question gets its first token after its prefill and at
/// most one slice of each answer in progress, instead of after those answers have finished.
const SLICE: Duration = Duration::from_millis(40);

/// How to load the model.
#[derive(Debug, Clone)]
pub struct LocalLlmConfig {
    pub path: PathBuf,
    /// Name served in `/v1/models`.
    pub name: String,
    /// Cached prompt prefixes kept (each holds its KV state: ~45 KB per token for SmolLM2-135M).
    pub cache_entries: usize,
}

struct CacheEntry {
    tokens: Vec<u32>,
    model: Model,
    used: u64,
}

/// What the worker thread owns.
struct Engine {
    weights: Model,
    tokenizer: GgufTokenizer,
    template: ChatTemplate,
    context: usize,
    cache: Vec<CacheEntry>,
    /// Answers begun ahead of time ([`Llm::speculate`]), newest last.
    drafts: Vec<Draft>,
    /// The prompts of the latest answers begun (hashed) and when, newest last: a draft that
    /// reaches the worker after its answer has begun is not made.
    begun: std::collections::VecDeque<(u64, Instant)>,
    cache_entries: usize,
    clock: u64,
    generated: Arc<std::sync::atomic::AtomicU64>,
    /// Grammars over the vocabulary, built at the first request that offers tools.
    grammars: Option<Arc<Grammars>>,
}

/// The embedded LLM.
pub struct LocalLlm {
    pool: Arc<WorkerPool<Engine>>,
    generated: Arc<std::sync::atomic::AtomicU64>,
    /// Generations (new or paused) waiting for the worker: a running one lets them in after a
    /// slice. Early prefills do not count: an answer is not paused for a guess.
    answers_waiting: Arc<std::sync::atomic::AtomicUsize>,
    tokenizer: Tokenizer,
    name: String,
    context: usize,
}

fn compute(e: candle_core::Error) -> LlmError {
    LlmError::Compute(e.to_string())
}

impl Engine {
    fn load(cfg: &LocalLlmConfig) -> Result<Self, LlmError> {
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
    fn grammars(&mut self) -> Result<Arc<Grammars>, LlmError> {
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

    /// Feeds `text` to the model after what `g` has so far (forced, not sampled).
    fn force(&self, g: &mut Generation, text: &str) -> Result<(), LlmError> {
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
    fn next_phase(
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
    fn begin_call(&mut self, g: &mut Generation) -> Result<(), LlmError> {
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

    fn encode(&self, text: &str) -> Result<Vec<u32>, LlmError> {
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
    fn start_from(&mut self, tokens: &[u32]) -> (Model, usize) {
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
    fn remember(&mut self, tokens: &[u32], model: &Model) {
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
    fn boundaries(&self, req: &GenerateRequest, tokens: &[u32]) -> Vec<usize> {
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
    fn run(
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
    fn prefill(
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
    fn generate(
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
    fn prompt(&mut self, req: &GenerateRequest) -> Result<Prompt, LlmError> {
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
    fn begin(
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
    fn speculate(
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
    fn resume(
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

    /// Decodes tokens of `g` until it ends, or until it has had [`SLICE`] of the worker while
    /// other requests wait (then it is handed back, to be queued behind them).
    fn decode(
        &mut self,
        mut g: Generation,
        tx: &mpsc::Sender<Result<LlmEvent, LlmError>>,
        others_waiting: &dyn Fn() -> bool,
    ) -> Result<Slice, LlmError> {
        let slice = Instant::now();
        let mut finish = FinishReason::Length;
        let stop_ids = self.tokenizer.stop_ids.clone();
        while g.generated.len() < g.max_tokens {
            let mut row = g.logits.squeeze(0).map_err(compute)?;
            if let (Some(writer), Some(grammars)) = (g.call.as_mut(), self.grammars.clone()) {
                let mut logits: Vec<f32> = row.to_vec1().map_err(compute)?;
                match writer
                    .mask(&grammars, &mut logits)
                    .map_err(|e| LlmError::Compute(format!("constrained decoding: {e}")))?
                {
                    Step::Complete => {
                        if self.next_phase(&mut g, tx)? {
                            finish = FinishReason::ToolCalls;
                            break;
                        }
                        continue;
                    }
                    Step::Sample => {
                        row = Tensor::new(logits, &Device::Cpu).map_err(compute)?;
                    }
                }
                let next = g.sampler.sample(&row).map_err(compute)?;
                if g.first_at.is_none() {
                    g.first_token_ms = g.submitted.elapsed().as_secs_f64() * 1e3;
                    g.first_at = Some(Instant::now());
                }
                let bytes = self
                    .tokenizer
                    .vocab_bytes
                    .get(next as usize)
                    .cloned()
                    .unwrap_or_default();
                let step = g
                    .call
                    .as_mut()
                    .map(|w| w.accept(&grammars, next, &bytes))
                    .transpose()
                    .map_err(|e| LlmError::Compute(format!("constrained decoding: {e}")))?;
                if matches!(step, Some(Step::Complete)) {
                    if self.next_phase(&mut g, tx)? {
                        finish = FinishReason::ToolCalls;
                        break;
                    }
                    continue;
                }
                g.generated.push(next);
                self.generated
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
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
                continue;
            }
            if g.repeat_penalty > 1.0 && !g.generated.is_empty() {
                let recent = &g.generated[g.generated.len().saturating_sub(64)..];
                row = candle_transformers::utils::apply_repeat_penalty(
                    &row,
                    g.repeat_penalty,
                    recent,
                )
                .map_err(compute)?;
            }
            let next = g.sampler.sample(&row).map_err(compute)?;
            if g.first_at.is_none() {
                g.first_token_ms = g.submitted.elapsed().as_secs_f64() * 1e3;
                g.first_at = Some(Instant::now());
            }
            if stop_ids.contains(&next) {
                finish = FinishReason::Stop;
                break;
            }
            g.generated.push(next);
            self.generated
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let text = self
                .tokenizer
                .tokenizer
                .decode(&g.generated, true)
                .map_err(|e| LlmError::Compute(format!("tokenizer: {e}")))?;
            // Wait for the rest of a character split across tokens.
            if !text.ends_with('\u{fffd}')
                && text.len() > g.emitted.len()
                && text.starts_with(&g.emitted)
            {
                let mut piece = text[g.emitted.len()..].to_string();
                g.emitted = text;
                if g.watch.is_some() {
                    // Held until it is clear whether the model is starting a call.
                    let so_far = g.emitted.trim_start();
                    if so_far.starts_with(CALL_OPEN) {
                        self.begin_call(&mut g)?;
                        continue;
                    }
                    if CALL_OPEN.starts_with(so_far) {
                        piece.clear();
                    } else {
                        g.watch = None;
                        piece = g.emitted.clone();
                    }
                }
                if g.unwrap_result && !piece.is_empty() {
                    let so_far = g.emitted.trim_start();
                    if let Some(rest) = so_far.strip_prefix(RESULT_OPEN) {
                        if rest.trim().is_empty() {
                            piece.clear();
                        } else {
                            g.unwrap_result = false;
                            piece = rest.trim_start().to_string();
                        }
                    } else if RESULT_OPEN.starts_with(so_far) {
                        piece.clear();
                    } else {
                        g.unwrap_result = false;
                        piece = g.emitted.clone();
                    }
                }
                let (out, stopped) = g.scanner.push(&piece);
                if !out.is_empty() && tx.blocking_send(Ok(LlmEvent::Delta(out))).is_err() {
                    return Ok(Slice::Finished); // cancelled
                }
                if stopped {
                    finish = FinishReason::Stop;
                    break;
                }
            }
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
        let decode_s = g.first_at.map(|t| t.elapsed().as_secs_f64()).unwrap_or(0.0);
        let n = g.generated.len();
        let usage = Usage {
            prompt_tokens: g.prompt_len,
            completion_tokens: n,
            cached_tokens: g.cached,
            queue_ms: (g.started - g.submitted).as_secs_f64() * 1e3,
            prefill_ms: g.prefill_ms,
            first_token_ms: g.first_token_ms,
            tokens_per_second: if decode_s > 0.0 && n > 1 {
                (n - 1) as f64 / decode_s
            } else {
                0.0
            },
            drafted_tokens: g.drafted,
        };
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
    fn remember_answer(&mut self, g: &Generation) {
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

/// The state before a generation's first token, kept while the model may still start a call.
struct Watch {
    model: Model,
    logits: Tensor,
    tools: ToolSet,
}

/// A generation between two turns on the worker: its own attention state and where it stands.
struct Generation {
    /// The call being written under the grammar.
    call: Option<CallWriter>,
    /// `tool_choice: auto`: the text is held while it may be the start of a call.
    watch: Option<Watch>,
    /// The text is held while it may be an echoed result tag (dropped if it is).
    unwrap_result: bool,
    model: Model,
    /// The logits for the next token.
    logits: Tensor,
    sampler: LogitsProcessor,
    prompt_len: usize,
    /// The prompt's tokens (with the generated ones, what the state covers at the end).
    prompt: Vec<u32>,
    cached: usize,
    max_tokens: usize,
    repeat_penalty: f32,
    generated: Vec<u32>,
    emitted: String,
    scanner: StopScanner,
    submitted: Instant,
    started: Instant,
    prefill_ms: f64,
    first_token_ms: f64,
    first_at: Option<Instant>,
    /// A draft: hand the generation back after this many tokens.
    pause_after: Option<usize>,
    /// Tokens that came from a draft made ahead of time.
    drafted: usize,
}

impl Generation {
    /// Whether to hand the worker back now: a draft has its tokens, or this generation has had
    /// its slice while others wait.
    fn should_pause(&self, slice: Instant, others_waiting: &dyn Fn() -> bool) -> bool {
        self.pause_after.is_some_and(|k| self.generated.len() >= k)
            || (slice.elapsed() >= SLICE && others_waiting())
    }
}

/// A prompt rendered into tokens.
struct Prompt {
    tokens: Vec<u32>,
    /// The call it must make, begun at the prompt's end.
    call: Option<CallWriter>,
    unwrap_result: bool,
}

/// The fewest tokens a cached state must share with a prompt to be used. Reusing a few tokens
/// saves little (~3 ms each) and, like any change of how the prompt is cut into passes, moves the
/// logits by float rounding: a prompt whose first token is a near tie (measured: a 0.08 margin
/// for "What is the capital of France?" after "You are a helpful assistant.") can then start
/// differently, so a state is not reused for the opening words of an unrelated system prompt.
const MIN_SHARED_PREFIX: usize = 16;

/// How many tokens `a` and `b` share from their start.
fn common_prefix(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

/// Drafts kept: one per session that is pausing is plenty; older ones are dropped.
const MAX_DRAFTS: usize = 4;
/// Prompt tokens the kept drafts may hold between them (their attention state is memory).
const MAX_DRAFT_TOKENS: usize = 4096;

/// What besides the prompt decides a generation's tokens: a draft serves only a request with
/// the same.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct DraftKey {
    max_tokens: usize,
    temperature: u32,
    top_p: Option<u32>,
    seed: Option<u64>,
    stop: Vec<String>,
    repeat_penalty: u32,
    tool_choice: String,
    tools: Vec<String>,
}

/// A prompt and its generation settings, hashed.
fn prompt_hash(tokens: &[u32], key: &DraftKey) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    tokens.hash(&mut h);
    key.hash(&mut h);
    h.finish()
}

impl DraftKey {
    fn of(req: &GenerateRequest) -> Self {
        DraftKey {
            max_tokens: req.max_tokens,
            temperature: req.temperature.to_bits(),
            top_p: req.top_p.map(f32::to_bits),
            seed: req.seed,
            stop: req.stop.clone(),
            repeat_penalty: req.repeat_penalty.to_bits(),
            tool_choice: format!("{:?}", req.tool_choice),
            tools: req.tools.iter().map(|t| t.to_view().to_string()).collect(),
        }
    }
}

/// An answer begun ahead of time: its first events and the state to continue from (`None` when
/// it ended within the draft).
struct Draft {
    tokens: Vec<u32>,
    key: DraftKey,
    events: Vec<LlmEvent>,
    generation: Option<Box<Generation>>,
    made_at: Instant,
}

/// Runs `tokens` (starting at position `pos`) through `g`'s model; its logits become those
/// after the last one.
fn run_tokens(g: &mut Generation, tokens: &[u32], pos: usize) -> Result<(), LlmError> {
    let input = Tensor::new(tokens, &Device::Cpu)
        .and_then(|t| t.unsqueeze(0))
        .map_err(compute)?;
    g.logits = g.model.forward(&input, pos).map_err(compute)?;
    Ok(())
}

/// What a turn on the worker left.
enum Slice {
    /// Handed back to let waiting requests in; queue it again to continue.
    Paused(Box<Generation>),
    /// Done (or cancelled); its events are sent.
    Finished,
}

impl LocalLlm {
    /// Loads the GGUF model (blocking: call from a blocking thread) and starts its worker.
    pub fn load(cfg: LocalLlmConfig) -> Result<Self, LlmError> {
        let engine = Engine::load(&cfg)?;
        let tokenizer = engine.tokenizer.tokenizer.clone();
        let context = engine.context;
        let generated = engine.generated.clone();
        crate::metrics::model_memory(
            "llm",
            engine
                .weights
                .weight_bytes()
                .map_or_else(|| crate::metrics::file_bytes(&cfg.path), |b| b as u64),
        );
        tracing::info!(
            model = %cfg.name,
            path = %cfg.path.display(),
            context,
            forward = engine.weights.kind(),
            weights_mb = engine.weights.weight_bytes().map(|b| b / 1_000_000),
            "language model loaded"
        );
        Ok(LocalLlm {
            pool: Arc::new(WorkerPool::start("llm", vec![engine], QUEUE)),
            answers_waiting: Default::default(),
            generated,
            tokenizer,
            name: cfg.name,
            context,
        })
    }

    /// Tokens generated since the model was loaded.
    pub fn generated_tokens(&self) -> u64 {
        self.generated.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The model file's path, for messages.
    pub fn describe(path: &Path) -> String {
        path.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    }
}

impl Llm for LocalLlm {
    fn generate(&self, request: GenerateRequest) -> BoxFuture<'_, Result<LlmStream, LlmError>> {
        Box::pin(async move {
            if request.messages.is_empty() {
                return Err(LlmError::Invalid("no messages".into()));
            }
            if request.max_tokens == 0 {
                return Err(LlmError::Invalid("max_tokens must be at least 1".into()));
            }
            let (tx, rx) = mpsc::channel(256);
            let submitted = Instant::now();
            let job_tx = tx.clone();
            let pool = self.pool.clone();
            let waiting = self.answers_waiting.clone();
            // The job streams into `tx`; its own failure is sent as the stream's last item. A
            // paused generation goes to the back of the queue until it finishes.
            tokio::spawn(async move {
                let others_waiting = {
                    let waiting = waiting.clone();
                    move || waiting.load(std::sync::atomic::Ordering::Acquire) > 0
                };
                let (t, w) = (job_tx.clone(), others_waiting.clone());
                let queued = Waiting::new(&waiting);
                // A new question goes ahead of the answers already under way, even those still on
                // their first phrase (see OPENING_TOKENS): its person has nothing yet.
                let opening = crate::workers::OpeningWork::begin();
                let mut result = pool
                    .run_first(move |engine: &mut Engine| {
                        drop(queued);
                        engine.generate(request, &t, submitted, &w)
                    })
                    .await;
                drop(opening);
                let err = loop {
                    match result {
                        Ok(Ok(Slice::Finished)) => return,
                        Ok(Ok(Slice::Paused(mut g))) => {
                            g.pause_after = None;
                            let opening = g.generated.len() < OPENING_TOKENS;
                            let (t, w) = (job_tx.clone(), others_waiting.clone());
                            let queued = Waiting::new(&waiting);
                            let job = move |engine: &mut Engine| {
                                drop(queued);
                                engine.decode(*g, &t, &w)
                            };
                            result = if opening {
                                pool.run_urgent(job).await
                            } else {
                                pool.run(job).await
                            };
                        }
                        Ok(Err(e)) => break e,
                        Err(e) => break LlmError::Pool(e),
                    }
                };
                let _ = tx.send(Err(err)).await;
            });
            let stream = tokio_stream_from(rx);
            Ok(stream)
        })
    }

    fn prefill(&self, messages: Vec<ChatMessage>) -> BoxFuture<'_, Result<(), LlmError>> {
        Box::pin(async move {
            if messages.is_empty() {
                return Ok(());
            }
            // Dropping this future (the caller gave up: its session ended) stops the work, whether
            // it is still queued or half way through the prompt.
            let dropped = Arc::new(std::sync::atomic::AtomicBool::new(false));
            let _guard = SetOnDrop(dropped.clone());
            self.pool
                .run(move |engine: &mut Engine| {
                    let given_up = || dropped.load(std::sync::atomic::Ordering::Acquire);
                    if given_up() {
                        return Ok(());
                    }
                    let text = engine
                        .template
                        .render(&messages, false)
                        .map_err(LlmError::Invalid)?;
                    let tokens = engine.encode(&text)?;
                    if tokens.len() >= engine.context {
                        return Ok(());
                    }
                    // Cache the whole prefix: run all but nothing after it.
                    let (mut model, cached) = engine.start_from(&tokens);
                    if cached < tokens.len()
                        && Engine::run(&mut model, &tokens, cached, tokens.len(), &given_up)?
                            .is_some()
                    {
                        engine.remember(&tokens, &model);
                    }
                    Ok(())
                })
                .await?
        })
    }

    fn speculate(
        &self,
        request: GenerateRequest,
        tokens: usize,
    ) -> BoxFuture<'_, Result<(), LlmError>> {
        Box::pin(async move {
            if request.messages.is_empty() || request.max_tokens == 0 {
                return Ok(());
            }
            // As for a prefill: dropping this future stops the work.
            let dropped = Arc::new(std::sync::atomic::AtomicBool::new(false));
            let _guard = SetOnDrop(dropped.clone());
            let waiting = self.answers_waiting.clone();
            let requested = Instant::now();
            self.pool
                .run(move |engine: &mut Engine| {
                    let given_up = || dropped.load(std::sync::atomic::Ordering::Acquire);
                    if given_up() {
                        return Ok(());
                    }
                    let answers_waiting = || waiting.load(std::sync::atomic::Ordering::Acquire) > 0;
                    engine.speculate(request, tokens, requested, &given_up, &answers_waiting)
                })
                .await?
        })
    }

    fn model_name(&self) -> &str {
        &self.name
    }

    fn count_tokens(&self, text: &str) -> usize {
        self.tokenizer
            .encode_fast(text, false)
            .map(|e| e.len())
            .unwrap_or_else(|_| crate::rag::embed::estimate_tokens(text))
    }

    fn context_length(&self) -> usize {
        self.context
    }

    fn queue_depth(&self) -> Option<usize> {
        Some(self.pool.queued())
    }
}

/// Counts a generation waiting for the worker, from creation until dropped (when its job starts,
/// or with the job if it never runs).
struct Waiting(Arc<std::sync::atomic::AtomicUsize>);

impl Waiting {
    fn new(count: &Arc<std::sync::atomic::AtomicUsize>) -> Self {
        count.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        Waiting(count.clone())
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    }
}

/// Sets its flag when dropped.
struct SetOnDrop(Arc<std::sync::atomic::AtomicBool>);

impl Drop for SetOnDrop {
    fn drop(&mut self) {
        self.0.store(true, std::sync::atomic::Ordering::Release);
    }
}

/// A stream over a channel receiver.
fn tokio_stream_from(mut rx: mpsc::Receiver<Result<LlmEvent, LlmError>>) -> LlmStream {
    Box::pin(futures::stream::poll_fn(move |cx| rx.poll_recv(cx)))
}
