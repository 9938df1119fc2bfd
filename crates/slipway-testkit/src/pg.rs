//! One real PostgreSQL server per test binary (started on first use, on a free port, with
//! password authentication over TCP so tests see the password handled as in production),
//! a fresh database per test.
//!
//! Statics are never dropped, so a small watchdog process stops the server (by its data
//! directory's postmaster pid) once this test process exits.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};

use crate::ports::free_port;

/// The superuser's password on the test server. Tests assert it never shows.
pub const PASSWORD: &str = "pw-Sl1pw4y-s3cret";

pub struct PgServer {
    pub port: u16,
    pub bin: PathBuf,
    dir: PathBuf,
    as_postgres: bool,
}

impl PgServer {
    fn start() -> Self {
        let bin = pg_bin();
        let dir = tempfile::Builder::new()
            .prefix("slipway-test-pg")
            .tempdir()
            .unwrap()
            .keep();
        let as_postgres = is_root();
        if as_postgres {
            run(Command::new("chown").arg("postgres:").arg(&dir));
        }
        let pwfile = dir.join("pw");
        std::fs::write(&pwfile, PASSWORD).unwrap();
        if as_postgres {
            run(Command::new("chown").arg("postgres:").arg(&pwfile));
        }
        let data = dir.join("data");
        run(as_pg(as_postgres, &bin, "initdb")
            .arg("-D")
            .arg(&data)
            .args([
                "-U",
                "postgres",
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
                "-E",
                "UTF8",
                "--no-locale",
                "--no-sync",
            ])
            .arg(format!("--pwfile={}", pwfile.display())));
        // A port picked free can be taken by another program before the postmaster binds
        // it; it then exits with "Address already in use" and we pick another.
        for _ in 0..5 {
            let port = free_port();
            let log = dir.join("pg.log");
            let _ = std::fs::remove_file(&log);
            let out = as_pg(as_postgres, &bin, "pg_ctl")
                .arg("-D")
                .arg(&data)
                .arg("-l")
                .arg(&log)
                .args(["-w", "-t", "30", "-o"])
                .arg(format!(
                    "-p {port} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=300",
                    dir.display()
                ))
                .arg("start")
                .output()
                .unwrap();
            if out.status.success() {
                return Self {
                    port,
                    bin,
                    dir,
                    as_postgres,
                };
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

    /// The URL of a database, with the password.
    pub fn url(&self, db: &str) -> String {
        format!(
            "postgres://postgres:{PASSWORD}@127.0.0.1:{}/{db}",
            self.port
        )
    }

    /// A fresh, empty database for one test; returns its URL.
    pub fn new_db(&self, prefix: &str) -> String {
        static N: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "{prefix}_{}_{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        self.psql("postgres", &format!("CREATE DATABASE \"{name}\""));
        self.url(&name)
    }

    /// Run SQL with the real `psql` over the Unix socket; returns its unaligned output.
    pub fn psql(&self, db: &str, sql: &str) -> String {
        let out = Command::new(self.bin.join("psql"))
            .args([
                "-X",
                "-q",
                "-A",
                "-t",
                "-v",
                "ON_ERROR_STOP=1",
                "-U",
                "postgres",
            ])
            .arg("-h")
            .arg(&self.dir)
            .arg("-p")
            .arg(self.port.to_string())
            .arg("-d")
            .arg(db)
            .arg("-c")
            .arg(sql)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "psql failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

/// The database name of a URL made by [`PgServer::url`].
pub fn db_name(url: &str) -> &str {
    url.rsplit('/').next().unwrap()
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

/// Stop the server when this process is gone (statics are never dropped): pg_ctl stops
/// the postmaster by the pid in its data directory.
#[expect(
    clippy::zombie_processes,
    reason = "the watchdog must outlive this process"
)]
fn spawn_watchdog(s: &PgServer) {
    let prefix = if s.as_postgres {
        "runuser -u postgres -- "
    } else {
        ""
    };
    let script = format!(
        "while kill -0 {pid} 2>/dev/null; do sleep 0.5; done; {prefix}{ctl} -D '{data}' -m immediate -w stop >/dev/null 2>&1; rm -rf '{dir}'",
        pid = std::process::id(),
        ctl = s.bin.join("pg_ctl").display(),
        data = s.dir.join("data").display(),
        dir = s.dir.display(),
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

fn as_pg(as_postgres: bool, bin: &std::path::Path, tool: &str) -> Command {
    if as_postgres {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(bin.join(tool));
        c
    } else {
        Command::new(bin.join(tool))
    }
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

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
