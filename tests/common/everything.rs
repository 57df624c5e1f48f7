//! The reference MCP server, `@modelcontextprotocol/server-everything` (npm, pinned in
//! tests/js/package.json), run with Node.js.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub fn everything_js() -> PathBuf {
    let js = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/js/node_modules/@modelcontextprotocol/server-everything/dist/index.js");
    assert!(
        js.exists(),
        "{} is missing: run `bash scripts/deps --test`",
        js.display()
    );
    js
}

/// The reference server over Streamable HTTP on a free port; killed on drop.
pub struct Everything {
    child: Child,
    pub url: String,
}

impl Drop for Everything {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn everything_over_http() -> Everything {
    everything_over("streamableHttp", "/mcp")
}

/// The reference server over the older HTTP+SSE transport (its stream at `/sse`).
pub fn everything_over_sse() -> Everything {
    everything_over("sse", "/sse")
}

fn everything_over(mode: &str, path: &str) -> Everything {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new("node")
        .arg(everything_js())
        .arg(mode)
        .env("PORT", port.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("node");
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "server-everything did not start");
        std::thread::sleep(Duration::from_millis(100));
    }
    Everything {
        child,
        url: format!("http://127.0.0.1:{port}{path}"),
    }
}
