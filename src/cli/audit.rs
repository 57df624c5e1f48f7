//! `voxd audit`: the audit trail of tool calls, from the knowledge base's database.

use anyhow::Result;
use voxd::config::{CommonArgs, Config, KbArgs, StageArgs};

/// `voxd audit` options.
#[derive(clap::Args)]
pub struct AuditArgs {
    #[command(flatten)]
    kb: KbArgs,
    /// Only this session's calls.
    #[arg(long)]
    session: Option<String>,
    /// Only calls made with this API key id.
    #[arg(long)]
    key_id: Option<String>,
    /// Only calls of this tool.
    #[arg(long)]
    tool: Option<String>,
    /// Only calls that ended so (sent, ok, error, timeout, refused, rejected).
    #[arg(long)]
    status: Option<String>,
    /// Rows after this id (paging).
    #[arg(long)]
    after: Option<i64>,
    /// Most rows (1-1000).
    #[arg(long, default_value_t = 100)]
    limit: usize,
    /// Print JSON lines instead of a table.
    #[arg(long)]
    json: bool,
}

pub fn run(common: &CommonArgs, args: AuditArgs) -> Result<()> {
    let stages = StageArgs {
        kb: args.kb,
        ..Default::default()
    };
    let cfg = Config::resolve(common, &stages)?;
    voxd::telemetry::init(cfg.log_format);
    let log = voxd::tools::AuditLog::for_kb(&cfg.kb.path, cfg.kb.url.as_deref())?;
    let rows = log.query(&voxd::tools::AuditQuery {
        session: args.session,
        key_id: args.key_id,
        tool: args.tool,
        status: args.status,
        after: args.after,
        limit: Some(args.limit),
    })?;
    for r in rows {
        if args.json {
            println!("{}", serde_json::to_string(&r)?);
        } else {
            println!(
                "{:>6}  {}  {}  {}  {}  {}  {}  {:.0} ms  {}",
                r.id,
                r.at,
                r.session,
                r.key_id,
                r.tool,
                r.validation,
                r.status,
                r.latency_ms,
                r.arguments
            );
        }
    }
    Ok(())
}
