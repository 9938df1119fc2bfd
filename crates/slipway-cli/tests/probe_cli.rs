//! Readiness probes of the process target through the real `slipway` binary: an
//! instance that never becomes ready fails its step with the last probe's own answer, so
//! a wrong path or port is told apart from a slow start without reading the code.

use crate::front_door_cli::Env;

#[test]
fn an_instance_never_ready_names_its_last_probe_answer() {
    let env = Env::new();
    let spec = env.spec(
        "1.0.0",
        "{ builtin: {} }",
        "{ canary: { steps: [ { set_weight: 100 } ] } }",
    );
    // demo-app answers 404 on a path it does not serve; give up after one second.
    let text = std::fs::read_to_string(&spec).unwrap().replace(
        "readiness: { http: /ready, timeout: 2s }",
        "readiness: { http: /not-a-probe, timeout: 2s, deadline: 1s }",
    );
    assert!(text.contains("/not-a-probe"), "{text}");
    std::fs::write(&spec, text).unwrap();
    let (code, out, err) = env.deploy(&spec);
    assert_ne!(code, 0, "{out}\n{err}");
    let all = format!("{out}\n{err}");
    assert!(
        all.contains("was not ready within 1s")
            && all.contains("last probe: GET /not-a-probe on 127.0.0.1:")
            && all.contains("answered 404"),
        "{all}"
    );
}
