//! The server as a library over a real SQLite store, for what the CLI tests cannot reach
//! quickly: an open event stream whose token is revoked ends instead of streaming on.
#![allow(
    clippy::disallowed_methods,
    reason = "tests start real processes and read the real clock directly"
)]
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests: a panic is a failure"
)]

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use slipway_engine::event::EngineEvent;
use slipway_engine::store::{JournalRecord, NewRun, Store};
use slipway_store::access::AccessDb;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_event_stream_ends_when_its_token_is_revoked() {
    let dir = tempfile::tempdir().unwrap();
    let store = slipway_store::open(&slipway_store::StoreLocation::Sqlite(
        dir.path().join("s.db"),
    ))
    .await
    .unwrap();
    let access = AccessDb::for_store(&store).await.unwrap();
    let issued = slipway_govern::access::issue_token("bob", Timestamp::now()).unwrap();
    access.add_token(&issued.row, "user:admin").await.unwrap();
    // A run that never finishes: its stream would stay open for ever.
    let now = Timestamp::now();
    store
        .create_run(
            NewRun {
                id: "r1".into(),
                plan_json: "{}".into(),
                digest: "d".repeat(64),
                release: "shop".into(),
                version: "1.0.0".into(),
                environment: "staging".into(),
                author: "a".into(),
                override_reason: None,
                created_at: now,
                workdir: dir.path().display().to_string(),
            },
            JournalRecord {
                run_id: "r1".into(),
                digest: "d".repeat(64),
                at: now,
                actor: "a".into(),
                event: EngineEvent::RunCreated {
                    release: "shop".into(),
                    version: "1.0.0".into(),
                    environment: "staging".into(),
                    digest: "d".repeat(64),
                    override_freeze: None,
                    plan_sha256: None,
                    workdir: None,
                },
            },
        )
        .await
        .unwrap();
    let session = session_over(store, dir.path());
    let options = slipway_server::Options {
        poll_interval: Duration::from_millis(20),
        reauth_interval: Duration::from_millis(100),
        ..Default::default()
    };
    let app = slipway_server::router(session, access.clone(), options).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum_serve(listener, app).await });

    let token = issued.token.clone();
    let mut r = tokio::task::spawn_blocking(move || {
        let mut s = TcpStream::connect(addr).unwrap();
        // Longer than any re-check; a stream that never ends fails the read.
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        write!(
            s,
            "GET /api/v1/runs/r1/events HTTP/1.0\r\nAuthorization: Bearer {token}\r\n\r\n"
        )
        .unwrap();
        let mut r = BufReader::new(s);
        let mut line = String::new();
        r.read_line(&mut line).unwrap();
        assert!(line.contains(" 200 "), "{line}");
        // Up to the first event's data: the stream is open.
        while !line.starts_with("data:") {
            line.clear();
            r.read_line(&mut line).unwrap();
        }
        assert!(line.contains("run_created"), "{line}");
        r
    })
    .await
    .unwrap();

    let (id, _) = slipway_govern::access::token_id(&issued.token).unwrap();
    assert!(
        access
            .revoke_token(id, Timestamp::now(), "user:admin")
            .await
            .unwrap()
    );

    let rest = tokio::task::spawn_blocking(move || {
        let mut rest = String::new();
        std::io::Read::read_to_string(&mut r, &mut rest).unwrap();
        rest
    })
    .await
    .unwrap();
    assert!(rest.contains("event: end"), "{rest}");
    assert!(rest.contains("was revoked"), "{rest}");
    assert!(!rest.contains(&issued.token), "{rest}");
}

async fn axum_serve(listener: tokio::net::TcpListener, app: axum::Router) {
    axum::serve(listener, app).await.unwrap();
}

/// One raw HTTP/1.0 request; the whole response.
fn http(addr: std::net::SocketAddr, request: &str) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut out = String::new();
    std::io::Read::read_to_string(&mut s, &mut out).unwrap();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sign_in_posted_from_another_site_is_refused_and_sets_no_cookie() {
    let dir = tempfile::tempdir().unwrap();
    let store = slipway_store::open(&slipway_store::StoreLocation::Sqlite(
        dir.path().join("s.db"),
    ))
    .await
    .unwrap();
    let access = AccessDb::for_store(&store).await.unwrap();
    let issued = slipway_govern::access::issue_token("mallory", Timestamp::now()).unwrap();
    access.add_token(&issued.row, "user:admin").await.unwrap();
    let session = session_over(store, dir.path());
    let app = slipway_server::router(session, access, slipway_server::Options::default()).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum_serve(listener, app).await });

    let body = format!("token={}&next=%2F", issued.token);
    let post = move |extra: &str| {
        format!(
            "POST /login HTTP/1.0\r\nHost: {addr}\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n{extra}\r\n{body}",
            body.len()
        )
    };
    let cases = [
        ("Sec-Fetch-Site: cross-site\r\n", false),
        ("Sec-Fetch-Site: same-site\r\n", false),
        ("Origin: http://evil.example\r\n", false),
        ("Origin: null\r\n", false),
        ("Sec-Fetch-Site: same-origin\r\n", true),
        (&*format!("Origin: http://{addr}\r\n"), true),
        // Not a browser (no Origin, no fetch metadata): nobody's session is at stake.
        ("", true),
    ];
    for (extra, signed_in) in cases {
        let request = post(extra);
        let r = tokio::task::spawn_blocking(move || http(addr, &request))
            .await
            .unwrap();
        let status = r.lines().next().unwrap_or_default().to_owned();
        let cookie = r.to_lowercase().contains("set-cookie: slipway_token=slw_");
        if signed_in {
            assert!(status.contains(" 303 "), "{extra:?}: {r}");
            assert!(cookie, "{extra:?}: {r}");
        } else {
            assert!(status.contains(" 403 "), "{extra:?}: {r}");
            assert!(!cookie, "{extra:?}: {r}");
            assert!(r.contains("another site"), "{extra:?}: {r}");
        }
    }
}

/// The server's session over an open store whose files live in `dir`.
fn session_over(store: slipway_store::AnyStore, dir: &std::path::Path) -> slipway_ops::Session {
    slipway_ops::Session::over(
        Arc::new(store),
        slipway_ops::Layout::new(dir),
        slipway_ops::Actor::local(),
    )
}
