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

mod decode;
mod engine;

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
    fn needs_tool_routing(&self) -> bool {
        true
    }

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
