//! Reading provider answers: the shapes Prometheus and JSON endpoints really return, and
//! the failures (refusals, garbage, HTTP errors, silence) over a real local socket.

use std::sync::{Arc, Mutex};

use rustls::pki_types::CertificateDer;
use slipway_model::spec::{Scalar, UrlProvider};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use super::*;

fn reading(body: &str) -> Reading {
    parse_prometheus(200, body.as_bytes())
}

#[test]
fn a_vector_with_one_sample_is_its_value() {
    let r = reading(
        r#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{"job":"api"},"value":[1700000000.123,"0.25"]}]}}"#,
    );
    assert_eq!(r, Reading::Value(0.25));
}

#[test]
fn a_scalar_is_its_value() {
    let r = reading(
        r#"{"status":"success","data":{"resultType":"scalar","result":[1700000000,"42"]}}"#,
    );
    assert_eq!(r, Reading::Value(42.0));
}

#[test]
fn an_empty_vector_is_no_data_never_a_value() {
    let r = reading(r#"{"status":"success","data":{"resultType":"vector","result":[]}}"#);
    let Reading::NoData(why) = r else {
        panic!("{r:?}")
    };
    assert!(why.contains("no sample"), "{why}");
}

#[test]
fn two_series_is_an_error_naming_the_labels_and_the_fix() {
    let r = reading(
        r#"{"status":"success","data":{"resultType":"vector","result":[
            {"metric":{"instance":"a:1","version":"canary"},"value":[1,"0.1"]},
            {"metric":{"instance":"b:2","version":"canary"},"value":[1,"0.3"]}]}}"#,
    );
    let Reading::Error(e) = r else {
        panic!("{r:?}")
    };
    assert!(e.contains("2 series"), "{e}");
    assert!(e.contains(r#"{instance="a:1",version="canary"}"#), "{e}");
    assert!(e.contains(r#"{instance="b:2",version="canary"}"#), "{e}");
    assert!(e.contains("sum()") && e.contains("max()"), "{e}");
}

#[test]
fn nan_and_infinity_are_no_data() {
    for v in ["NaN", "+Inf", "-Inf"] {
        let r = reading(&format!(
            r#"{{"status":"success","data":{{"resultType":"vector","result":[{{"metric":{{}},"value":[1,"{v}"]}}]}}}}"#
        ));
        assert!(matches!(r, Reading::NoData(_)), "{v}: {r:?}");
    }
}

#[test]
fn a_refused_query_is_an_error_with_prometheus_own_words() {
    let r = parse_prometheus(
        400,
        br#"{"status":"error","errorType":"bad_data","error":"invalid parameter \"query\": 1:5: parse error: unexpected \"}\""}"#,
    );
    let Reading::Error(e) = r else {
        panic!("{r:?}")
    };
    assert!(e.contains("bad_data"), "{e}");
    assert!(e.contains("parse error: unexpected"), "{e}");
    assert!(e.contains("400"), "{e}");
}

#[test]
fn garbage_and_http_errors_are_errors_quoting_the_answer() {
    let Reading::Error(e) = parse_prometheus(200, b"<html>login</html>") else {
        panic!()
    };
    assert!(e.contains("not JSON") && e.contains("<html>login"), "{e}");
    let Reading::Error(e) = parse_prometheus(500, b"internal error") else {
        panic!()
    };
    assert!(
        e.contains("HTTP 500") && e.contains("internal error"),
        "{e}"
    );
    let Reading::Error(e) =
        reading(r#"{"status":"success","data":{"resultType":"matrix","result":[]}}"#)
    else {
        panic!()
    };
    assert!(e.contains("range vector"), "{e}");
}

#[test]
fn json_pointers_read_numbers_and_numeric_strings_only() {
    let body = br#"{"canary":{"error_ratio":0.02,"p99":"150.5","state":"ok","flag":true,"list":[1,2],"gone":null}}"#;
    assert_eq!(
        parse_json(200, body, "/canary/error_ratio"),
        Reading::Value(0.02)
    );
    assert_eq!(parse_json(200, body, "/canary/p99"), Reading::Value(150.5));
    assert_eq!(parse_json(200, body, "/canary/list/1"), Reading::Value(2.0));
    let Reading::NoData(w) = parse_json(200, body, "/canary/missing") else {
        panic!()
    };
    assert!(w.contains("/canary/missing"), "{w}");
    assert!(matches!(
        parse_json(200, body, "/canary/gone"),
        Reading::NoData(_)
    ));
    for (p, found) in [
        ("/canary/state", "the string \"ok\""),
        ("/canary/flag", "the boolean true"),
        ("/canary", "an object"),
        ("/canary/list", "an array [1,2]"),
    ] {
        let Reading::Error(e) = parse_json(200, body, p) else {
            panic!("{p}")
        };
        assert!(e.contains(p) && e.contains(found), "{p}: {e}");
    }
    assert!(matches!(parse_json(503, b"busy", "/x"), Reading::Error(e) if e.contains("HTTP 503")));
    assert!(matches!(parse_json(200, b"nope", "/x"), Reading::Error(e) if e.contains("not JSON")));
}

/// A local server answering each connection with `answer` (or never, when `None`), and
/// keeping every request head it received.
async fn serve(answer: Option<String>) -> (std::net::SocketAddr, Arc<Mutex<Vec<String>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let heads = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            let answer = answer.clone();
            let heads = heads.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 8192];
                let mut got = Vec::new();
                while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                    let Ok(n) = s.read(&mut buf).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    got.extend_from_slice(&buf[..n]);
                }
                heads
                    .lock()
                    .unwrap()
                    .push(String::from_utf8_lossy(&got).into_owned());
                match answer {
                    Some(a) => {
                        let _ = s.write_all(a.as_bytes()).await;
                    }
                    // Silence: hold the connection open past any timeout.
                    None => tokio::time::sleep(Duration::from_secs(30)).await,
                }
            });
        }
    });
    (addr, seen)
}

fn http(status: &str, body: &str) -> String {
    format!(
        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
}

fn prom(url: String, timeout: &str) -> ProviderSet {
    ProviderSet::new(&BTreeMap::from([(
        "prom".to_owned(),
        Provider {
            prometheus: Some(UrlProvider {
                url,
                timeout: Some(timeout.into()),
            }),
            http: None,
        },
    )]))
}

fn metric(provider: &str, query: &str) -> Metric {
    Metric {
        name: "error-ratio".into(),
        provider: provider.into(),
        query: Some(query.into()),
        max: Some(Scalar("0.1".into())),
        min: None,
        compare: None,
        confidence: None,
    }
}

fn vars() -> QueryVars {
    QueryVars {
        service: "api".into(),
        version: "2.0.0".into(),
        stable_version: "1.0.0".into(),
        environment: "prod".into(),
        interval_ms: 1000,
        vars: BTreeMap::new(),
    }
}

#[tokio::test]
async fn the_rendered_query_is_sent_with_basic_auth_and_credentials_never_shown() {
    let (addr, seen) = serve(Some(http(
        "200 OK",
        r#"{"status":"success","data":{"resultType":"scalar","result":[1,"0.5"]}}"#,
    )))
    .await;
    let set = prom(format!("http://ops:s3cr%3At@{addr}/prom/"), "2s");
    let a = set
        .read_one(
            &metric(
                "prom",
                r#"sum(rate(x{service="{{ service }}",version="{{ version }}"}[{{ interval }}]))"#,
            ),
            &vars(),
        )
        .await;
    assert_eq!(a.reading, Reading::Value(0.5));
    assert_eq!(
        a.query,
        r#"sum(rate(x{service="api",version="2.0.0"}[1s]))"#
    );
    assert_eq!(a.source, "prometheus `prom`");
    let head = seen.lock().unwrap()[0].clone();
    assert!(
        head.starts_with("GET /prom/api/v1/query?query=sum%28rate%28x%7Bservice%3D%22api%22"),
        "{head}"
    );
    // ops:s3cr:t, percent-decoded, as basic auth.
    let token = base64::engine::general_purpose::STANDARD.encode("ops:s3cr:t");
    assert!(
        head.contains(&format!("authorization: Basic {token}")),
        "{head}"
    );
}

#[tokio::test]
async fn an_unreachable_provider_errors_without_its_credentials() {
    // A port nothing listens on: bind, note it, close.
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let set = prom(format!("http://ops:hunter2@{addr}"), "2s");
    let a = set.read_one(&metric("prom", "up"), &vars()).await;
    let Reading::Error(e) = &a.reading else {
        panic!("{a:?}")
    };
    assert!(
        e.contains("cannot connect") && e.contains(&addr.to_string()),
        "{e}"
    );
    assert!(!e.contains("hunter2") && !e.contains("ops:"), "{e}");
}

#[tokio::test]
async fn http_500_is_an_error() {
    let (addr, _) = serve(Some(http("500 Internal Server Error", "boom"))).await;
    let a = prom(format!("http://{addr}"), "2s")
        .read_one(&metric("prom", "up"), &vars())
        .await;
    assert!(
        matches!(&a.reading, Reading::Error(e) if e.contains("HTTP 500") && e.contains("boom")),
        "{a:?}"
    );
}

#[tokio::test]
async fn a_silent_provider_times_out_at_its_timeout() {
    let (addr, seen) = serve(None).await;
    let started = std::time::Instant::now();
    let a = prom(format!("http://{addr}"), "300ms")
        .read_one(&metric("prom", "up"), &vars())
        .await;
    let Reading::Error(e) = &a.reading else {
        panic!("{a:?}")
    };
    assert!(
        e.contains("no answer within the provider's timeout 300ms"),
        "{e}"
    );
    assert_eq!(seen.lock().unwrap().len(), 1, "the request was sent");
    // Bounded by the timeout (generously: the machine is shared), not by the server.
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[tokio::test]
async fn the_http_provider_fills_placeholders_in_its_url_and_reads_the_pointer() {
    let (addr, seen) = serve(Some(http("200 OK", r#"{"canary":{"errors":"0.03"}}"#))).await;
    let set = ProviderSet::new(&BTreeMap::from([(
        "stats".to_owned(),
        Provider {
            prometheus: None,
            http: Some(UrlProvider {
                url: format!("http://u:pw@{addr}/stats/{{{{ service }}}}?v={{{{ version }}}}"),
                timeout: None,
            }),
        },
    )]));
    let a = set
        .read_one(&metric("stats", "/canary/errors"), &vars())
        .await;
    assert_eq!(a.reading, Reading::Value(0.03));
    assert_eq!(
        a.query,
        format!("GET http://{addr}/stats/api?v=2.0.0 → /canary/errors")
    );
    assert!(seen.lock().unwrap()[0].starts_with("GET /stats/api?v=2.0.0 HTTP/1.1"));
}

/// A throwaway CA and an HTTPS server for 127.0.0.1 signed by it, answering `answer`
/// to each request and keeping the request heads: (CA certificate, address, heads).
async fn serve_tls(
    answer: String,
) -> (
    CertificateDer<'static>,
    std::net::SocketAddr,
    Arc<Mutex<Vec<String>>>,
) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
    use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
    let ca_key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = p.self_signed(&ca_key).unwrap();
    let key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["127.0.0.1".to_owned()])
        .unwrap()
        .signed_by(&key, &ca, &ca_key)
        .unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(
        vec![leaf.der().clone()],
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
    )
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let heads = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let (acceptor, answer, heads) = (acceptor.clone(), answer.clone(), heads.clone());
            tokio::spawn(async move {
                // A client refusing the certificate ends the handshake: nothing is read.
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut got = Vec::new();
                let mut buf = [0u8; 4096];
                while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tls.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => got.extend_from_slice(&buf[..n]),
                    }
                }
                heads
                    .lock()
                    .unwrap()
                    .push(String::from_utf8_lossy(&got).into_owned());
                let _ = tls.write_all(answer.as_bytes()).await;
                let _ = tls.shutdown().await;
            });
        }
    });
    (ca.der().clone(), addr, seen)
}

#[tokio::test]
async fn an_https_provider_is_read_over_verified_tls_with_basic_auth() {
    let (ca, addr, seen) = serve_tls(http(
        "200 OK",
        r#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{},"value":[1,"0.02"]}]}}"#,
    ))
    .await;
    let set = prom(format!("https://ops:pw@{addr}"), "3s").with_roots(vec![ca]);
    let a = set.read_one(&metric("prom", "up"), &vars()).await;
    assert_eq!(a.reading, Reading::Value(0.02), "{a:?}");
    let head = seen.lock().unwrap()[0].clone();
    let token = base64::engine::general_purpose::STANDARD.encode("ops:pw");
    assert!(
        head.contains(&format!("authorization: Basic {token}")),
        "{head}"
    );
}

#[tokio::test]
async fn an_https_provider_with_an_untrusted_certificate_is_an_error_and_never_asked() {
    let (_, addr, seen) = serve_tls(http("200 OK", "{}")).await;
    // Another CA as the only root: the server's chain does not verify.
    let (other, _, _) = serve_tls(String::new()).await;
    let set = prom(format!("https://ops:topsecret@{addr}"), "3s").with_roots(vec![other]);
    let a = set.read_one(&metric("prom", "up"), &vars()).await;
    let Reading::Error(e) = &a.reading else {
        panic!("{a:?}")
    };
    assert!(e.contains("TLS") && e.contains("certificate"), "{e}");
    assert!(!e.contains("topsecret"), "{e}");
    assert!(seen.lock().unwrap().is_empty(), "the request was sent");
}

#[tokio::test]
async fn a_secret_variable_fills_the_url_at_measure_time_and_is_masked_in_what_returns() {
    // The provider echoes what it was sent, as a misconfigured proxy might.
    let (addr, seen) = serve(Some(http(
        "502 Bad Gateway",
        "upstream refused ops:s3cr3t-value",
    )))
    .await;
    let set =
        prom(format!("http://ops:{{{{ vars.pw }}}}@{addr}"), "2s").with_secrets(BTreeMap::from([
            ("pw".to_owned(), "s3cr3t-value".to_owned()),
        ]));
    let a = set
        .read_one(&metric("prom", r#"up{pw="{{ vars.pw }}"}"#), &vars())
        .await;
    let Reading::Error(e) = &a.reading else {
        panic!("{a:?}")
    };
    assert!(e.contains("HTTP 502"), "{e}");
    assert!(
        !e.contains("s3cr3t-value") && !a.query.contains("s3cr3t-value"),
        "{a:?}"
    );
    let head = seen.lock().unwrap()[0].clone();
    let token = base64::engine::general_purpose::STANDARD.encode("ops:s3cr3t-value");
    assert!(
        head.contains(&format!("authorization: Basic {token}")),
        "{head}"
    );
}

#[tokio::test]
async fn an_unresolved_secret_variable_is_an_error_naming_the_secret() {
    let mut set = prom("http://ops:{{ vars.pw }}@127.0.0.1:9".into(), "1s");
    set.unresolved
        .insert("pw".into(), "secret://env/PROM_PASSWORD".into());
    let a = set.read_one(&metric("prom", "up"), &vars()).await;
    let Reading::Error(e) = &a.reading else {
        panic!("{a:?}")
    };
    assert!(
        e.contains("`{{ vars.pw }}` is the secret `secret://env/PROM_PASSWORD`, not resolved"),
        "{e}"
    );
}

#[tokio::test]
async fn the_metrics_of_a_measurement_are_asked_at_once() {
    // A server that answers nobody until both requests are in: asked one after another,
    // the first would wait out its timeout and be an error.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while held.len() < 2 {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = vec![0u8; 4096];
            let mut got = Vec::new();
            while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = s.read(&mut buf).await.unwrap();
                got.extend_from_slice(&buf[..n]);
            }
            held.push(s);
        }
        for mut s in held {
            let _ = s
                .write_all(
                    http(
                        "200 OK",
                        r#"{"status":"success","data":{"resultType":"scalar","result":[1,"1"]}}"#,
                    )
                    .as_bytes(),
                )
                .await;
        }
    });
    let set = prom(format!("http://{addr}"), "2s");
    let (a, b) = (metric("prom", "up"), metric("prom", "up"));
    let asked = set.read(&[&a, &b], &vars()).await;
    let readings: Vec<&Reading> = asked.iter().map(|x| &x.reading).collect();
    assert_eq!(readings, [&Reading::Value(1.0), &Reading::Value(1.0)]);
}
