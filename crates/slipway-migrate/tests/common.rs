//! Test harness: one real PostgreSQL server for the whole test binary (started on first use,
//! on a free port, socket in its own temp dir), a fresh database per test, SQLite files in
//! temp dirs, and migration directories written from string fixtures.
//!
//! Statics are never dropped, so besides the `Drop` guard (which stops a server that is not
//! shared) a small watchdog process stops the shared server once this test process exits.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use sqlx::Connection;

pub struct PgServer {
    pub port: u16,
    pub bin: PathBuf,
    dir: tempfile::TempDir,
    as_postgres: bool,
}

impl PgServer {
    fn pg_ctl(&self) -> Command {
        let ctl = self.bin.join("pg_ctl");
        if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(ctl);
            c
        } else {
            Command::new(ctl)
        }
    }

    fn start() -> Self {
        let bin = pg_bin();
        let dir = tempfile::Builder::new()
            .prefix("slipway-pg")
            .tempdir()
            .unwrap();
        let as_postgres = is_root();
        if as_postgres {
            run(Command::new("chown").arg("postgres:").arg(dir.path()));
        }
        let data = dir.path().join("data");
        let mut initdb = if as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(bin.join("initdb"));
            c
        } else {
            Command::new(bin.join("initdb"))
        };
        run(initdb.arg("-D").arg(&data).args([
            "-U",
            "postgres",
            "-A",
            "trust",
            "-E",
            "UTF8",
            "--no-locale",
            "--no-sync",
        ]));
        let mut server = Self {
            port: 0,
            bin,
            dir,
            as_postgres,
        };
        // A port picked free can be taken by another program before the postmaster binds
        // it; it then exits with "Address already in use" and we pick another.
        let log = server.dir.path().join("pg.log");
        for _ in 0..5 {
            server.port = free_port();
            let _ = std::fs::remove_file(&log);
            let out = server
                .pg_ctl()
                .arg("-D")
                .arg(&data)
                .arg("-l")
                .arg(&log)
                .args(["-w", "-t", "30", "-o"])
                .arg(format!(
                    "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200",
                    server.port,
                    server.dir.path().display()
                ))
                .arg("start")
                .output()
                .unwrap();
            if out.status.success() {
                return server;
            }
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            assert!(
                text.contains("Address already in use"),
                "pg_ctl start failed: {}{}\n{text}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        panic!("PostgreSQL found five ports taken in a row");
    }

    fn stop(&self) {
        let _ = self
            .pg_ctl()
            .arg("-D")
            .arg(self.dir.path().join("data"))
            .args(["-m", "immediate", "-w", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }

    pub fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }

    /// A fresh, empty database for one test.
    pub async fn new_db(&self, prefix: &str) -> String {
        static N: AtomicU32 = AtomicU32::new(0);
        let name = format!("{prefix}_{}", N.fetch_add(1, Ordering::Relaxed));
        let mut c = sqlx::PgConnection::connect(&self.url("postgres"))
            .await
            .unwrap();
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE \"{name}\"")))
            .execute(&mut c)
            .await
            .unwrap();
        c.close().await.unwrap();
        self.url(&name)
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The shared server, started on first use.
pub fn pg() -> &'static PgServer {
    static PG: OnceLock<PgServer> = OnceLock::new();
    PG.get_or_init(|| {
        let s = PgServer::start();
        spawn_watchdog(&s);
        s
    })
}

/// Stop the server when this process is gone (statics are never dropped).
#[expect(
    clippy::zombie_processes,
    reason = "the watchdog must outlive this process"
)]
fn spawn_watchdog(s: &PgServer) {
    let data = s.dir.path().join("data");
    let prefix = if s.as_postgres {
        "runuser -u postgres -- "
    } else {
        ""
    };
    let script = format!(
        "while kill -0 {pid} 2>/dev/null; do sleep 0.5; done; {prefix}{ctl} -D '{data}' -m immediate -w stop >/dev/null 2>&1; rm -rf '{dir}'",
        pid = std::process::id(),
        ctl = s.bin.join("pg_ctl").display(),
        data = data.display(),
        dir = s.dir.path().display(),
    );
    Command::new("sh")
        .arg("-c")
        .arg(script)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
}

pub fn pg_bin() -> PathBuf {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL is not installed: apt-get install -y postgresql")
        .map(|e| e.unwrap().path().join("bin"))
        .filter(|p| p.join("initdb").exists())
        .collect();
    dirs.sort_by_key(|p| {
        p.parent()
            .and_then(|v| v.file_name())
            .and_then(|v| v.to_str())
            .and_then(|v| v.parse::<u32>().ok())
            .unwrap_or(0)
    });
    dirs.pop().expect("no /usr/lib/postgresql/*/bin/initdb")
}

fn is_root() -> bool {
    let out = Command::new("id").arg("-u").output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim() == "0"
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A migration directory from `(file name, content)` pairs.
pub fn migrations(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (name, sql) in files {
        std::fs::write(dir.path().join(name), sql).unwrap();
    }
    dir
}

/// A new SQLite URL in a temp dir (the dir lives as long as the returned guard).
pub fn sqlite() -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("app.db").display());
    (dir, url)
}

/// Both backends, for tests that must pass on each.
pub async fn both(prefix: &str) -> Vec<(Option<tempfile::TempDir>, String)> {
    let (d, s) = sqlite();
    vec![(None, pg().new_db(prefix).await), (Some(d), s)]
}

/// Run SQL and return the first column of every row as text.
pub async fn query_text(url: &str, sql: &str) -> Vec<Option<String>> {
    if url.starts_with("postgres") {
        let mut c = sqlx::PgConnection::connect(url).await.unwrap();
        let rows: Vec<(Option<String>,)> = sqlx::query_as(sqlx::AssertSqlSafe(sql.to_owned()))
            .fetch_all(&mut c)
            .await
            .unwrap();
        c.close().await.unwrap();
        rows.into_iter().map(|r| r.0).collect()
    } else {
        let path = url.strip_prefix("sqlite://").unwrap();
        let mut c = sqlx::SqliteConnection::connect_with(
            &sqlx::sqlite::SqliteConnectOptions::new().filename(path),
        )
        .await
        .unwrap();
        let rows: Vec<(Option<String>,)> = sqlx::query_as(sqlx::AssertSqlSafe(sql.to_owned()))
            .fetch_all(&mut c)
            .await
            .unwrap();
        c.close().await.unwrap();
        rows.into_iter().map(|r| r.0).collect()
    }
}

/// Run SQL statements.
pub async fn exec(url: &str, sql: &str) {
    if url.starts_with("postgres") {
        let mut c = sqlx::PgConnection::connect(url).await.unwrap();
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_owned()))
            .execute(&mut c)
            .await
            .unwrap();
        c.close().await.unwrap();
    } else {
        let path = url.strip_prefix("sqlite://").unwrap();
        let mut c = sqlx::SqliteConnection::connect_with(
            &sqlx::sqlite::SqliteConnectOptions::new()
                .filename(path)
                .create_if_missing(true),
        )
        .await
        .unwrap();
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_owned()))
            .execute(&mut c)
            .await
            .unwrap();
        c.close().await.unwrap();
    }
}

/// Poll `f` until it is true or the deadline passes.
#[allow(dead_code, reason = "used by some test modules only")]
pub async fn eventually<F: AsyncFnMut() -> bool>(within: Duration, mut f: F) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if f().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

#[allow(dead_code, reason = "used by some test modules only")]
pub fn path_of(url: &str) -> &Path {
    Path::new(url.strip_prefix("sqlite://").unwrap())
}
