//! A `voxd serve` started by `voxd bench` or `voxd eval` on a loopback port, stopped on drop.

use anyhow::{bail, Context, Result};

/// How `voxd bench` and `voxd eval` talk to the server: the key, and whether to draw progress.
#[derive(clap::Args)]
pub struct DriverArgs {
    #[arg(long, env = "VOXD_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
}

/// A `voxd serve` this process started, stopped on drop.
pub struct ChildServer(std::process::Child);

impl Drop for ChildServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `voxd serve` on a loopback port and waits until it is ready; returns its address.
pub async fn start(extra: &[String], no_llm: bool) -> Result<(ChildServer, String)> {
    use std::io::{BufRead, BufReader};
    let mut cmd = std::process::Command::new(std::env::current_exe()?);
    cmd.args(["serve", "--addr", "127.0.0.1:0", "--log-format", "json"]);
    if no_llm {
        cmd.args(["--llm-model", "none"]);
    }
    let mut child = cmd
        .args(extra)
        // whisper.cpp reports every aborted transcription as an error: not the server's errors.
        .env(
            "RUST_LOG",
            std::env::var("VOXD_SERVE_RUST_LOG").unwrap_or_else(|_| "info,whisper_rs=off".into()),
        )
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .context("starting voxd serve")?;
    let stderr = child.stderr.take().context("no stderr")?;
    let child = ChildServer(child);
    let (tx, rx) = std::sync::mpsc::channel();
    // `VOXD_SERVE_LOG=FILE`: keep the server's log (JSON lines) there.
    let mut log_file =
        std::env::var_os("VOXD_SERVE_LOG").and_then(|p| std::fs::File::create(p).ok());
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(f) = log_file.as_mut() {
                use std::io::Write;
                let _ = writeln!(f, "{line}");
            }
            let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
            if v["fields"]["message"] == "listening" {
                let _ = tx.send(v["fields"]["addr"].as_str().unwrap_or_default().to_string());
            } else if v["level"] == "ERROR" {
                eprintln!("voxd serve: {}", v["fields"]["message"]);
            }
        }
    });
    let addr =
        tokio::task::spawn_blocking(move || rx.recv_timeout(std::time::Duration::from_secs(600)))
            .await?
            .context("voxd serve did not start (see its errors above)")?;
    wait_ready(&addr).await?;
    Ok((child, addr))
}

/// Polls `/readyz` until the server is ready (10 minutes at most: models may be loading).
async fn wait_ready(addr: &str) -> Result<()> {
    let http = reqwest::Client::new();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(600);
    loop {
        let ready = http
            .get(format!("http://{addr}/readyz"))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success());
        if ready {
            return Ok(());
        }
        if std::time::Instant::now() > deadline {
            bail!("voxd serve at {addr} never became ready");
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

/// The realtime endpoint to talk to: `url` if given, else a server started here (kept alive
/// by the returned guard).
pub async fn endpoint(
    url: &Option<String>,
    serve_args: &[String],
    no_llm: bool,
) -> Result<(Option<ChildServer>, String)> {
    match url {
        Some(u) => Ok((None, u.clone())),
        None => {
            eprintln!("starting voxd serve…");
            let (child, addr) = start(serve_args, no_llm).await?;
            Ok((Some(child), format!("ws://{addr}/v1/realtime")))
        }
    }
}
