//! Smoke checks from the spec against a real demo-app instance: http status and body,
//! tcp and command, each passing and failing.

use std::time::Duration;

use slipway_checks::Outcome;
use slipway_checks::smoke::run;
use slipway_model::spec::{Check, HttpCheck};

use crate::common::{closed_port, demo_app};

fn http(url: &str, status: Option<u16>, contains: Option<&str>) -> Check {
    Check {
        http: Some(HttpCheck {
            url: url.into(),
            status,
            contains: contains.map(str::to_owned),
        }),
        ..Check::default()
    }
}

#[tokio::test]
async fn http_checks_judge_status_and_body_against_the_candidate() {
    let app = demo_app(&["--version", "2.4.0"]);
    let t = Duration::from_secs(3);
    let base = Some(app.addr.as_str());
    let ok = run(
        "version",
        &http("http://{base}/version", None, Some("2.4.0")),
        base,
        t,
    )
    .await;
    assert_eq!(ok.verdict, Outcome::Pass, "{ok:?}");
    assert_eq!(ok.target, format!("http://{}/version", app.addr));
    let wrong_body = run(
        "version",
        &http("http://{base}/version", None, Some("9.9.9")),
        base,
        t,
    )
    .await;
    assert_eq!(wrong_body.verdict, Outcome::Fail, "{wrong_body:?}");
    assert!(wrong_body.measured.contains("2.4.0"), "{wrong_body:?}");
    let wrong_status = run(
        "missing",
        &http("http://{base}/nope", Some(200), None),
        base,
        t,
    )
    .await;
    assert_eq!(wrong_status.verdict, Outcome::Fail, "{wrong_status:?}");
    assert_eq!(wrong_status.measured, "HTTP 404");
}

#[tokio::test]
async fn tcp_and_command_checks_pass_and_fail() {
    let app = demo_app(&[]);
    let t = Duration::from_secs(3);
    let tcp = |a: String| Check {
        tcp: Some(a),
        ..Check::default()
    };
    assert_eq!(
        run("port", &tcp(app.addr.clone()), None, t).await.verdict,
        Outcome::Pass
    );
    let closed = run(
        "port",
        &tcp(format!("127.0.0.1:{}", closed_port())),
        None,
        t,
    )
    .await;
    assert_eq!(closed.verdict, Outcome::Fail);
    let cmd = |c: &str| Check {
        command: Some(c.into()),
        ..Check::default()
    };
    assert_eq!(
        run("cmd", &cmd("test 1 -eq 1"), None, t).await.verdict,
        Outcome::Pass
    );
    let bad = run("cmd", &cmd("echo 'schema missing' >&2; exit 4"), None, t).await;
    assert_eq!(bad.verdict, Outcome::Fail);
    assert!(
        bad.measured.contains("exit 4") && bad.measured.contains("schema missing"),
        "{bad:?}"
    );
}
