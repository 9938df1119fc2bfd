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

    let rest = tokio::task::spawn_blocking(move || rest_of_stream(&mut r))
        .await
        .unwrap();
    assert!(rest.contains("event: end"), "{rest}");
    assert!(rest.contains("is not valid"), "{rest}");
    assert!(!rest.contains(&issued.token), "{rest}");
}

/// What is left of an event stream until the server ends it; fails after 20 s (keep-alive
/// comments would otherwise keep a stream that never ends open for ever).
fn rest_of_stream(r: &mut BufReader<TcpStream>) -> String {
    r.get_ref()
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let mut rest = Vec::new();
    loop {
        let mut buf = [0u8; 4096];
        match std::io::Read::read(r, &mut buf) {
            Ok(0) => break,
            Ok(n) => rest.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) => panic!("{e}"),
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the stream did not end: {}",
            String::from_utf8_lossy(&rest)
        );
    }
    String::from_utf8_lossy(&rest).into_owned()
}

async fn axum_serve(listener: tokio::net::TcpListener, app: axum::Router) {
    slipway_server::serve(
        listener,
        app,
        &slipway_server::Options::default(),
        std::future::pending(),
    )
    .await
    .unwrap();
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
        let cookie = r.to_lowercase().contains("set-cookie: slipway_session=");
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

/// A store with one token for `user` (and optional grants), served on a free port.
struct Served {
    addr: std::net::SocketAddr,
    access: AccessDb,
    token: String,
    _dir: tempfile::TempDir,
}

async fn served(user: &str, options: slipway_server::Options) -> Served {
    let dir = tempfile::tempdir().unwrap();
    let store = slipway_store::open(&slipway_store::StoreLocation::Sqlite(
        dir.path().join("s.db"),
    ))
    .await
    .unwrap();
    let access = AccessDb::for_store(&store).await.unwrap();
    let issued = slipway_govern::access::issue_token(user, Timestamp::now()).unwrap();
    access.add_token(&issued.row, "user:admin").await.unwrap();
    let session = session_over(store, dir.path());
    let app = slipway_server::router(session, access.clone(), options.clone()).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        slipway_server::serve(listener, app, &options, std::future::pending())
            .await
            .unwrap();
    });
    Served {
        addr,
        access,
        token: issued.token,
        _dir: dir,
    }
}

/// One raw request, off the async runtime.
async fn request(addr: std::net::SocketAddr, raw: String) -> String {
    tokio::task::spawn_blocking(move || http(addr, &raw))
        .await
        .unwrap()
}

fn login_request(addr: std::net::SocketAddr, body: &str) -> String {
    format!(
        "POST /login HTTP/1.0\r\nHost: {addr}\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

/// The `name=value` a response sets, if any.
fn set_cookie(response: &str) -> Option<String> {
    response
        .lines()
        .find(|l| l.to_ascii_lowercase().starts_with("set-cookie:"))
        .map(|l| l["set-cookie:".len()..].trim().to_owned())
}

fn status(response: &str) -> u16 {
    response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

fn page_with(addr: std::net::SocketAddr, path: &str, cookie: &str) -> String {
    format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\nCookie: {cookie}\r\n\r\n")
}

/// The cookie holds a session id, not the token; logging out ends the session on the
/// server (the same cookie sent again is refused), and revoking the token ends every
/// session signed in with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cookie_is_a_server_side_session_ended_by_logout_and_by_revoking_the_token() {
    let s = served("bob", slipway_server::Options::default()).await;
    let body = format!("token={}&next=%2F", s.token);
    let signed_in = request(s.addr, login_request(s.addr, &body)).await;
    assert_eq!(status(&signed_in), 303, "{signed_in}");
    let set = set_cookie(&signed_in).unwrap();
    assert!(set.starts_with("slipway_session="), "{set}");
    assert!(
        !set.contains(&s.token) && !set.contains("slw_"),
        "the token is not in the cookie: {set}"
    );
    let lower = set.to_ascii_lowercase();
    assert!(
        lower.contains("httponly") && lower.contains("samesite=strict") && lower.contains("path=/"),
        "{set}"
    );
    assert!(!lower.contains("secure"), "plain HTTP: {set}");
    let cookie = set.split(';').next().unwrap().to_owned();
    let (_, sid) = cookie.split_once('=').unwrap();
    assert_eq!(sid.len(), 64, "{sid}");

    // The session works for pages and the API (the page's event stream).
    let index = request(s.addr, page_with(s.addr, "/", &cookie)).await;
    assert_eq!(status(&index), 200, "{index}");
    assert!(index.contains("signed in as bob"), "{index}");
    let api = request(s.addr, page_with(s.addr, "/api/v1/runs", &cookie)).await;
    assert_eq!(status(&api), 200, "{api}");
    // The old form of cookie, the raw token, is not accepted.
    let old = request(
        s.addr,
        page_with(
            s.addr,
            "/api/v1/runs",
            &format!("slipway_token={}", s.token),
        ),
    )
    .await;
    assert_eq!(status(&old), 401, "{old}");

    // Logout ends it on the server: the same cookie, replayed, no longer works.
    let out = request(
        s.addr,
        format!(
            "POST /logout HTTP/1.0\r\nHost: {}\r\nCookie: {cookie}\r\nContent-Length: 0\r\n\r\n",
            s.addr
        ),
    )
    .await;
    assert_eq!(status(&out), 303, "{out}");
    assert!(set_cookie(&out).unwrap().contains("Max-Age=0"), "{out}");
    let replayed = request(s.addr, page_with(s.addr, "/api/v1/runs", &cookie)).await;
    assert_eq!(status(&replayed), 401, "{replayed}");
    assert!(replayed.contains("session ended"), "{replayed}");
    let page = request(s.addr, page_with(s.addr, "/", &cookie)).await;
    assert_eq!(status(&page), 303, "to the login form: {page}");

    // A new session; revoking its token ends it.
    let again = request(s.addr, login_request(s.addr, &body)).await;
    let cookie = set_cookie(&again)
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    assert_eq!(
        status(&request(s.addr, page_with(s.addr, "/api/v1/runs", &cookie)).await),
        200
    );
    let (id, _) = slipway_govern::access::token_id(&s.token).unwrap();
    assert!(
        s.access
            .revoke_token(id, Timestamp::now(), "user:admin")
            .await
            .unwrap()
    );
    let after = request(s.addr, page_with(s.addr, "/api/v1/runs", &cookie)).await;
    assert_eq!(status(&after), 401, "{after}");
}

/// Served over TLS (`--secure-cookies`), the cookie is `Secure` and host-bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_tls_the_session_cookie_is_secure_and_host_scoped() {
    let s = served(
        "bob",
        slipway_server::Options {
            secure_cookie: true,
            ..Default::default()
        },
    )
    .await;
    let r = request(
        s.addr,
        login_request(s.addr, &format!("token={}&next=%2F", s.token)),
    )
    .await;
    let set = set_cookie(&r).unwrap();
    assert!(set.starts_with("__Host-slipway_session="), "{set}");
    assert!(
        set.contains("; Secure") && set.contains("Path=/") && !set.contains("Domain"),
        "{set}"
    );
    let cookie = set.split(';').next().unwrap().to_owned();
    assert_eq!(
        status(&request(s.addr, page_with(s.addr, "/api/v1/runs", &cookie)).await),
        200
    );
}

/// `next=` only ever leads to a path of this site: browsers drop a tab or newline from a
/// URL (`/<TAB>/host` is `//host`), read `\` as `/`, and a vertical tab is no valid
/// header value (it used to be a 500). The sign-in page runs no script, so no URL can
/// sign a browser in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn next_leads_only_to_a_path_of_this_site_and_the_login_page_takes_no_token_from_the_url() {
    let s = served("bob", slipway_server::Options::default()).await;
    for (next, to) in [
        ("%2Fruns%2Fr1", "/runs/r1"),
        ("%2F%09%2Fevil.example", "/"),
        ("%2F%0B%2Fevil.example", "/"),
        ("%2F%0A%2Fevil.example", "/"),
        ("%2F%2Fevil.example", "/"),
        ("%2F%5Cevil.example", "/"),
        ("https%3A%2F%2Fevil.example", "/"),
        ("%2F%20%2Fevil.example", "/"),
    ] {
        let r = request(
            s.addr,
            login_request(s.addr, &format!("token={}&next={next}", s.token)),
        )
        .await;
        assert_eq!(status(&r), 303, "{next}: {r}");
        assert!(r.contains(&format!("location: {to}\r\n")), "{next}: {r}");
        let form = request(
            s.addr,
            format!(
                "GET /login?next={next} HTTP/1.0\r\nHost: {}\r\n\r\n",
                s.addr
            ),
        )
        .await;
        assert_eq!(status(&form), 200, "{next}: {form}");
        assert!(
            form.contains(&format!(
                "name=\"next\" value=\"{}\"",
                to.replace('/', "&#x2f;")
            )),
            "{next}: {form}"
        );
        assert!(
            !form.contains("<script"),
            "the login page runs no script: {form}"
        );
    }
    let js = request(
        s.addr,
        format!("GET /assets/login.js HTTP/1.0\r\nHost: {}\r\n\r\n", s.addr),
    )
    .await;
    assert_eq!(status(&js), 404, "{js}");
}

/// Wrong secrets are answered alike whether the id exists or not, and past the limit an
/// id is refused at once (429, Retry-After) without the argon2id work; a token already
/// verified keeps working meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_secrets_are_answered_alike_and_rate_limited_per_token_id() {
    let s = served("bob", slipway_server::Options::default()).await;
    let (id, _) = slipway_govern::access::token_id(&s.token).unwrap();
    let bearer = |token: &str| {
        format!(
            "GET /api/v1/runs HTTP/1.0\r\nHost: {}\r\nAuthorization: Bearer {token}\r\n\r\n",
            s.addr
        )
    };
    // The holder uses it first (verified, remembered).
    assert_eq!(status(&request(s.addr, bearer(&s.token)).await), 200);

    let known = format!("slw_{id}_{}", "0".repeat(64));
    let unknown = format!("slw_ffffffffffff_{}", "0".repeat(64));
    let body = |r: &str| r.split("\r\n\r\n").nth(1).unwrap_or_default().to_owned();
    for i in 0..slipway_govern::access::MAX_FAILURES {
        let a = request(s.addr, bearer(&known)).await;
        let b = request(s.addr, bearer(&unknown)).await;
        assert_eq!(
            (status(&a), status(&b)),
            (401, 401),
            "attempt {i}: {a}\n{b}"
        );
        assert_eq!(
            body(&a).replace(id, "ID"),
            body(&b).replace("ffffffffffff", "ID"),
            "the same answer whether the id exists or not"
        );
    }
    for t in [&known, &unknown] {
        let r = request(s.addr, bearer(t)).await;
        assert_eq!(status(&r), 429, "{r}");
        assert!(r.to_ascii_lowercase().contains("retry-after:"), "{r}");
    }
    // The holder's verified token still works; signing in anew waits for the window.
    assert_eq!(status(&request(s.addr, bearer(&s.token)).await), 200);
    let form = request(
        s.addr,
        login_request(s.addr, &format!("token={}&next=%2F", s.token)),
    )
    .await;
    assert_eq!(status(&form), 303, "a verified token signs in: {form}");
    let r = request(
        s.addr,
        login_request(s.addr, &format!("token={known}&next=%2F")),
    )
    .await;
    assert_eq!(status(&r), 429, "{r}");
    assert!(set_cookie(&r).is_none());
}

/// An open event stream checks the role too, not just the token: once the viewer's grant
/// is revoked, the stream ends (within a re-check) instead of streaming on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_event_stream_ends_when_the_viewers_role_is_revoked() {
    let dir = tempfile::tempdir().unwrap();
    let store = slipway_store::open(&slipway_store::StoreLocation::Sqlite(
        dir.path().join("s.db"),
    ))
    .await
    .unwrap();
    let access = AccessDb::for_store(&store).await.unwrap();
    let issued = slipway_govern::access::issue_token("bob", Timestamp::now()).unwrap();
    access.add_token(&issued.row, "user:admin").await.unwrap();
    access
        .grant("user:admin", "admin", "*", "user:admin", Timestamp::now())
        .await
        .unwrap();
    let grant = access
        .grant(
            "user:bob",
            "viewer",
            "staging",
            "user:admin",
            Timestamp::now(),
        )
        .await
        .unwrap();
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
        while !line.starts_with("data:") {
            line.clear();
            r.read_line(&mut line).unwrap();
        }
        r
    })
    .await
    .unwrap();

    assert!(
        access
            .revoke_grant(grant, "user:admin", Timestamp::now())
            .await
            .unwrap()
    );
    let rest = tokio::task::spawn_blocking(move || rest_of_stream(&mut r))
        .await
        .unwrap();
    assert!(rest.contains("event: end"), "{rest}");
    assert!(rest.contains("lacks the `viewer` role"), "{rest}");
}

/// The environment dashboard (`slipway_ops::console::dashboard`, the `/environments` page)
/// shows a service whose only deploy is older than 500 later runs of another release: it
/// reads the newest and newest succeeded run per release and environment
/// (`Store::latest_runs`), not the newest 500 runs. Seeded through the store API.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_a_service_deployed_before_500_other_runs() {
    let dir = tempfile::tempdir().unwrap();
    let store = slipway_store::open(&slipway_store::StoreLocation::Sqlite(
        dir.path().join("s.db"),
    ))
    .await
    .unwrap();
    let t0 = Timestamp::now();
    let seed = async |id: String, release: &str, service: &str, secs: i64| {
        let yaml = format!(
            "apiVersion: slipway/v1\nkind: Release\nmetadata: {{ name: {release}, version: 1.0.{secs}, type: patch }}\n\
             services:\n  {service}:\n    steps:\n      - {{ name: one, run: 'true' }}\n\
             environments:\n  prod:\n    target: {{ exec: {{}} }}\n"
        );
        let spec = slipway_model::validate::load("release.yaml", &yaml)
            .unwrap()
            .spec;
        let plan = slipway_model::plan::plan(&spec, "prod", &slipway_model::plan::Facts::default())
            .unwrap();
        let at = t0 + jiff::SignedDuration::from_secs(secs);
        let digest = format!("d-{id}");
        let record = |event| JournalRecord {
            run_id: id.clone(),
            digest: digest.clone(),
            at,
            actor: "a".into(),
            event,
        };
        store
            .create_run(
                NewRun {
                    id: id.clone(),
                    plan_json: serde_json::to_string(&plan).unwrap(),
                    digest: digest.clone(),
                    release: release.into(),
                    version: format!("1.0.{secs}"),
                    environment: "prod".into(),
                    author: "a".into(),
                    override_reason: None,
                    created_at: at,
                    workdir: dir.path().display().to_string(),
                },
                record(EngineEvent::RunCreated {
                    release: release.into(),
                    version: format!("1.0.{secs}"),
                    environment: "prod".into(),
                    digest: digest.clone(),
                    override_freeze: None,
                    plan_sha256: None,
                    workdir: None,
                }),
            )
            .await
            .unwrap();
        store
            .commit(vec![record(EngineEvent::StateChanged {
                from: slipway_engine::RunState::Pending,
                to: slipway_engine::RunState::Succeeded,
                reason: None,
            })])
            .await
            .unwrap();
    };
    seed("api-1".into(), "shop", "api", 0).await;
    // Together: the store's writer commits them in groups.
    futures_util::future::join_all(
        (0..510).map(|i| seed(format!("noise-{i}"), "batch", "worker", 1 + i)),
    )
    .await;
    let session = session_over(store, dir.path());
    let cells = slipway_ops::console::dashboard(&session).await.unwrap();
    let api = cells
        .iter()
        .find(|c| c.service == "api" && c.environment == "prod")
        .unwrap_or_else(|| panic!("api is missing from the dashboard: {cells:?}"));
    assert_eq!(api.running.as_deref(), Some("1.0.0"));
    assert_eq!(api.running_run.as_deref(), Some("api-1"));
    assert!(!api.drift);
    let worker = cells.iter().find(|c| c.service == "worker").unwrap();
    assert_eq!(worker.running.as_deref(), Some("1.0.510"));
    assert_eq!(cells.len(), 2, "{cells:?}");
}
