//! Accounts against a real PostgreSQL: a throwaway cluster (initdb as `postgres` when
//! root, a free port, its socket in the temp dir, stopped on drop) with a role holding
//! SELECT on one table. A present grant passes, a missing INSERT is named exactly, a
//! missing role fails with the statement that creates it.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use slipway_checks::Outcome;
use slipway_checks::accounts::postgres_role;
use sqlx::Connection;

/// A PostgreSQL cluster of this test, stopped (by its data directory) when dropped.
struct Pg {
    bin: PathBuf,
    dir: tempfile::TempDir,
    port: u16,
    as_postgres: bool,
}

impl Pg {
    /// As the `postgres` user when root (initdb refuses root), else as ourselves.
    fn cmd(bin: &std::path::Path, tool: &str, as_postgres: bool) -> Command {
        if as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(bin.join(tool));
            c
        } else {
            Command::new(bin.join(tool))
        }
    }

    fn start() -> Self {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .expect("PostgreSQL is not installed: apt-get install -y postgresql")
            .map(|e| e.unwrap().path().join("bin"))
            .filter(|b| b.join("initdb").exists())
            .max_by_key(|b| {
                // Newest major version: compare numerically, "9.6" < "15".
                b.parent()
                    .and_then(|v| v.file_name())
                    .and_then(|v| v.to_str())
                    .and_then(|v| v.split('.').next())
                    .and_then(|v| v.parse::<u32>().ok())
                    .unwrap_or(0)
            })
            .expect("no /usr/lib/postgresql/*/bin/initdb");
        let as_postgres = nix::unistd::Uid::effective().is_root();
        let dir = tempfile::Builder::new()
            .prefix("slipway-checks-pg")
            .tempdir()
            .unwrap();
        if as_postgres {
            assert!(
                Command::new("chown")
                    .arg("postgres:")
                    .arg(dir.path())
                    .status()
                    .unwrap()
                    .success()
            );
        }
        let data = dir.path().join("data");
        let o = Self::cmd(&bin, "initdb", as_postgres)
            .arg("-D")
            .arg(&data)
            .args(["-U", "postgres", "-A", "trust", "-E", "UTF8"])
            .args(["--no-locale", "--no-sync"])
            .output()
            .unwrap();
        assert!(o.status.success(), "initdb: {o:?}");
        // A free port can be taken between probing and binding: try a few.
        for _ in 0..3 {
            let port = {
                let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
                l.local_addr().unwrap().port()
            };
            let o = Self::cmd(&bin, "pg_ctl", as_postgres)
                .arg("-D")
                .arg(&data)
                .arg("-l")
                .arg(dir.path().join("pg.log"))
                .args(["-w", "-t", "30", "-o"])
                .arg(format!(
                    "-p {port} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
                    dir.path().display()
                ))
                .arg("start")
                .stdout(Stdio::null())
                .output()
                .unwrap();
            if o.status.success() {
                return Self {
                    bin,
                    dir,
                    port,
                    as_postgres,
                };
            }
        }
        let log = std::fs::read_to_string(dir.path().join("pg.log")).unwrap_or_default();
        panic!("PostgreSQL did not start:\n{log}");
    }

    fn url(&self, user: &str) -> String {
        format!(
            "postgres://{user}@127.0.0.1:{}/postgres?connect_timeout=5",
            self.port
        )
    }
}

impl Drop for Pg {
    fn drop(&mut self) {
        let _ = Self::cmd(&self.bin, "pg_ctl", self.as_postgres)
            .arg("-D")
            .arg(self.dir.path().join("data"))
            .args(["-m", "immediate", "-w", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

#[tokio::test]
async fn postgres_roles_and_grants_are_checked_against_a_real_server() {
    let pg = Pg::start();
    let url = pg.url("postgres");
    let mut c = sqlx::PgConnection::connect(&url).await.unwrap();
    sqlx::raw_sql(
        "CREATE TABLE orders (id int PRIMARY KEY);
         CREATE ROLE app_reader LOGIN;
         GRANT SELECT ON orders TO app_reader;",
    )
    .execute(&mut c)
    .await
    .unwrap();
    c.close().await.unwrap();
    let timeout = Duration::from_secs(5);

    // Present grant: the role row and the SELECT row pass.
    let rows = postgres_role(&url, "app_reader", &["SELECT ON orders".into()], timeout).await;
    assert_eq!(rows.len(), 2, "{rows:#?}");
    assert!(rows.iter().all(|r| r.verdict == Outcome::Pass), "{rows:#?}");
    assert_eq!(rows[0].measured, "exists, can log in");
    assert_eq!(rows[1].expected, "SELECT ON orders");

    // Missing INSERT: SELECT still passes, INSERT fails and is named exactly, with the fix.
    let rows = postgres_role(
        &url,
        "app_reader",
        &["SELECT, INSERT ON orders".into()],
        timeout,
    )
    .await;
    let failed: Vec<_> = rows.iter().filter(|r| r.verdict == Outcome::Fail).collect();
    assert_eq!(failed.len(), 1, "{rows:#?}");
    let f = failed[0];
    assert_eq!(f.target, "app_reader INSERT ON orders");
    assert_eq!(f.measured, "missing");
    assert_eq!(
        f.hint.as_deref(),
        Some("GRANT INSERT ON orders TO app_reader;")
    );
    assert!(
        rows.iter()
            .any(|r| r.target == "app_reader SELECT ON orders" && r.verdict == Outcome::Pass),
        "{rows:#?}"
    );

    // Missing role: one failing row naming it, with the statement that creates it.
    let rows = postgres_role(&url, "app_writer", &["INSERT ON orders".into()], timeout).await;
    assert_eq!(rows.len(), 1, "{rows:#?}");
    assert_eq!(rows[0].verdict, Outcome::Fail);
    assert_eq!(rows[0].target, "app_writer role");
    assert_eq!(rows[0].measured, "missing");
    assert_eq!(
        rows[0].hint.as_deref(),
        Some("CREATE ROLE app_writer LOGIN;")
    );
}
