//! A real PostgreSQL 16 server with pgvector for one test, started from the `pgserver` wheel that
//! `scripts/deps --test` unpacks (`VOXD_TEST_PGSERVER`, default
//! `$TMPDIR/voxd-test-pgserver-0.1.4`). PostgreSQL refuses to run as root, so as root the server
//! runs as the unprivileged user `voxd-pg` that the same script creates. Killed on drop.

use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The unpacked wheel.
pub fn install_dir() -> PathBuf {
    std::env::var_os("VOXD_TEST_PGSERVER")
        .map(PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join("voxd-test-pgserver-0.1.4"))
}

fn bin(name: &str) -> PathBuf {
    let p = install_dir().join("pgserver/pginstall/bin").join(name);
    assert!(
        p.exists(),
        "{} is missing: run `bash scripts/deps --test` (it unpacks PostgreSQL + pgvector from the pgserver wheel)",
        p.display()
    );
    p
}

/// The uid and gid to run PostgreSQL as: ours, or `voxd-pg`'s when we are root.
fn run_as() -> Option<(u32, u32)> {
    let me = std::fs::read_to_string("/proc/self/status")
        .ok()?
        .lines()
        .find(|l| l.starts_with("Uid:"))?
        .split_whitespace()
        .nth(1)?
        .parse::<u32>()
        .ok()?;
    if me != 0 {
        return None;
    }
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap();
    let line = passwd
        .lines()
        .find(|l| l.starts_with("voxd-pg:"))
        .expect("PostgreSQL cannot run as root and there is no user voxd-pg: run `bash scripts/deps --test`");
    let f: Vec<&str> = line.split(':').collect();
    Some((f[2].parse().unwrap(), f[3].parse().unwrap()))
}

/// A running server.
pub struct Postgres {
    child: Child,
    pub port: u16,
    dir: tempfile::TempDir,
    user: Option<(u32, u32)>,
}

impl Postgres {
    /// initdb into a fresh folder, then start the server on a free loopback port.
    pub fn start() -> Postgres {
        let dir = tempfile::Builder::new()
            .prefix("voxd-pg-")
            .tempdir()
            .unwrap();
        let user = run_as();
        if let Some((uid, gid)) = user {
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid)).unwrap();
        }
        let data = dir.path().join("data");
        let mut initdb = Command::new(bin("initdb"));
        initdb
            .arg("-D")
            .arg(&data)
            .args(["-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        if let Some((uid, gid)) = user {
            initdb.uid(uid).gid(gid);
        }
        let out = initdb.output().unwrap();
        assert!(
            out.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let child = Self::spawn(dir.path(), port, user);
        let pg = Postgres {
            child,
            port,
            dir,
            user,
        };
        pg.wait_up();
        pg
    }

    fn spawn(dir: &std::path::Path, port: u16, user: Option<(u32, u32)>) -> Child {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("postgres.log"))
            .unwrap();
        let mut server = Command::new(bin("postgres"));
        server
            .arg("-D")
            .arg(dir.join("data"))
            .arg("-k")
            .arg(dir)
            .args(["-p", &port.to_string(), "-h", "127.0.0.1"])
            // A test database: durability off, room for several replicas' pools.
            .args(["-c", "fsync=off", "-c", "synchronous_commit=off"])
            .args(["-c", "full_page_writes=off", "-c", "max_connections=100"])
            .stdout(Stdio::null())
            .stderr(log);
        if let Some((uid, gid)) = user {
            server.uid(uid).gid(gid);
        }
        server.spawn().unwrap()
    }

    fn wait_up(&self) {
        let t0 = Instant::now();
        loop {
            if postgres::Client::connect(&self.url("postgres"), postgres::NoTls).is_ok() {
                return;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(60),
                "PostgreSQL did not start: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops the server (a fast shutdown: sessions are cut off, nothing is left running).
    pub fn stop(&mut self) {
        if !matches!(self.child.try_wait(), Ok(None)) {
            return;
        }
        let _ = Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }

    /// Starts the server again on the same data and port.
    pub fn restart(&mut self) {
        self.child = Self::spawn(self.dir.path(), self.port, self.user);
        self.wait_up();
    }

    /// The URL of database `db` on this server.
    pub fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }

    /// Creates database `db` and returns its URL.
    pub fn database(&self, db: &str) -> String {
        let mut c = self.client("postgres");
        c.batch_execute(&format!("CREATE DATABASE {db}")).unwrap();
        self.url(db)
    }

    /// A plain client on database `db`.
    pub fn client(&self, db: &str) -> postgres::Client {
        postgres::Client::connect(&self.url(db), postgres::NoTls).unwrap()
    }

    /// The server's log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("postgres.log")).unwrap_or_default()
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        self.stop();
    }
}
