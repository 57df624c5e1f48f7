//! The Python virtualenv the SDK tests run in (under target/, made once), with its packages
//! pinned.

use std::path::{Path, PathBuf};
use std::process::Command;

const HINT: &str = "install Python 3 with venv (`bash scripts/deps --test` does)";

/// The Python packages the SDK tests use, pinned: the official SDK (its types are the
/// conformance reference), the OpenAI Agents SDK, aiortc (a WebRTC peer) and the MCP SDK (an
/// MCP server).
pub const PYTHON_PACKAGES: &[&str] = &[
    "openai[realtime]==3.57.0",
    "openai-agents==0.24.0",
    "aiortc==1.14.0",
    "mcp==2.3.0",
];

/// A virtualenv with [`PYTHON_PACKAGES`], made once and kept under target/.
pub fn openai_python() -> PathBuf {
    let venv = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/openai-venv");
    let python = venv.join("bin/python");
    let ok = |p: &Path| {
        Command::new(p)
            .args([
                "-c",
                "import importlib.metadata as m, sys; import websockets, agents, aiortc; \
                 sys.exit(m.version('openai') != '3.57.0' or m.version('openai-agents') != '0.24.0' \
                 or m.version('aiortc') != '1.14.0' or m.version('mcp') != '2.3.0')",
            ])
            .status()
            .is_ok_and(|s| s.success())
    };
    if !ok(&python) {
        if !python.exists() {
            let status = Command::new("python3")
                .args(["-m", "venv"])
                .arg(&venv)
                .status()
                .unwrap_or_else(|e| panic!("python3: {e}\n{HINT}"));
            assert!(status.success(), "python3 -m venv failed: {HINT}");
        }
        let status = Command::new(&python)
            .args(["-m", "pip", "install", "--quiet"])
            .args(PYTHON_PACKAGES)
            .status()
            .unwrap();
        assert!(status.success(), "pip install {PYTHON_PACKAGES:?} failed");
    }
    python
}

/// The test MCP server (tests/python/shop_mcp.py, on the official Python MCP SDK) on a free
/// port; killed on drop.
pub struct ShopMcp {
    child: std::process::Child,
    pub url: String,
}

impl Drop for ShopMcp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn shop_mcp() -> ShopMcp {
    let python = openai_python();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new(python)
        .arg(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/python/shop_mcp.py"))
        .arg(port.to_string())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("python");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "shop_mcp.py did not start"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    ShopMcp {
        child,
        url: format!("http://127.0.0.1:{port}/mcp"),
    }
}
