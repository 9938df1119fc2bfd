//! Issue 16's first acceptance point in a real browser: headless Chromium (apt) driven by
//! playwright-core (npm; never a downloaded browser) through a real `slipway serve`
//! driving a real process-target canary under live traffic. The author starts the deploy
//! from the CLI against the server; a viewer signs in, sees the run page without a single
//! button and is refused (403) when posting anyway; the approver signs in, finds the run
//! in the inbox, opens its plan, approves it (confirming the dialog); the run proceeds
//! and its page's canary chart grows point by point as the event stream reports
//! measurements, ending with every point the server's chart has.

use serde_json::Value;
use std::process::Command;

use crate::console_cli::{AwaitingApproval, get_as};

/// The browser's part: prints what it saw as JSON, or `{"skip": why}` when Chromium
/// cannot start on this machine.
const FLOW: &str = r#"
const { chromium } = require('playwright-core');
(async () => {
  const [base, run, approver, viewer] = process.argv.slice(2);
  let browser;
  try {
    browser = await chromium.launch({
      executablePath: '/usr/bin/chromium',
      args: ['--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage'],
    });
  } catch (e) {
    process.stdout.write(JSON.stringify({ skip: String(e) }));
    return;
  }
  const out = {};
  const signIn = async (ctx, next, token) => {
    const page = await ctx.newPage();
    await page.goto(base + next);
    await page.fill('input[name=token]', token);
    await Promise.all([page.waitForNavigation(), page.click('#login button')]);
    return page;
  };
  try {
    // The viewer, while the run waits for its approval: no buttons, and a post is refused.
    const vctx = await browser.newContext();
    const vpage = await signIn(vctx, '/runs/' + run, viewer);
    out.viewer_url = vpage.url();
    out.viewer_forms = await vpage.$$eval('form.action', (f) => f.length);
    out.viewer_state = (await vpage.textContent('#run-state')).trim();
    const byCookie = await vpage.evaluate(async (u) => {
      const r = await fetch(u, { method: 'POST', headers: { 'Content-Type': 'application/json' }, body: '{}' });
      return { status: r.status, body: await r.text() };
    }, '/api/v1/runs/' + run + '/pause');
    out.viewer_post_cookie = byCookie;
    const byToken = await vctx.request.post(base + '/api/v1/runs/' + run + '/pause', {
      headers: { Authorization: 'Bearer ' + viewer }, data: {},
    });
    out.viewer_post_token = { status: byToken.status(), body: await byToken.text() };

    // The approver: the inbox, the plan, approve (the page asks first).
    const actx = await browser.newContext();
    const page = await signIn(actx, '/inbox', approver);
    page.on('dialog', (d) => { out.confirm = d.message(); d.accept(); });
    out.inbox_url = page.url();
    out.inbox = await page.$$eval('#inbox tr[data-run]', (rs) => rs.map((r) => r.getAttribute('data-run')));
    await Promise.all([page.waitForNavigation(), page.click('#inbox tr[data-run="' + run + '"] a.review')]);
    out.plan_url = page.url();
    out.plan_digest = (await page.textContent('#plan-digest')).trim();
    out.plan_gates = await page.textContent('#gates');
    await Promise.all([page.waitForNavigation(), page.click('form[data-action=approve] button')]);
    out.after_approve = page.url();

    // The run goes on: the chart's points, sampled until the stream ends.
    const points = () => page.$$eval('#canary-chart circle', (c) => c.length);
    out.counts = [await points()];
    const deadline = Date.now() + 40000;
    for (;;) {
      const n = await points();
      if (n !== out.counts[out.counts.length - 1]) { out.counts.push(n); }
      const ended = (await page.textContent('#stream-state')).startsWith('ended');
      if (ended) {
        // The last swap comes half a second after the last chart entry: wait for the
        // page to show as many points as the server's chart has now.
        const want = await page.evaluate(async (u) => {
          const text = await (await fetch(u)).text();
          return new DOMParser().parseFromString(text, 'image/svg+xml').querySelectorAll('circle').length;
        }, '/runs/' + run + '/chart.svg');
        await page.waitForFunction(
          (w) => document.querySelectorAll('#canary-chart circle').length === w, want, { timeout: 10000 });
        const n = await points();
        if (n !== out.counts[out.counts.length - 1]) { out.counts.push(n); }
        break;
      }
      if (Date.now() > deadline) { out.timeout = true; break; }
      await page.waitForTimeout(100);
    }
    out.stream = await page.textContent('#stream-state');
    out.final_state = (await page.textContent('#run-state')).trim();
    out.final_points = await page.$$eval('#canary-chart circle', (cs) => cs.map((c) => [
      c.getAttribute('data-series'), c.getAttribute('data-role'), c.getAttribute('data-seq'), c.getAttribute('data-value'),
    ]));
  } finally {
    await browser.close();
  }
  process.stdout.write(JSON.stringify(out));
})().catch((e) => { console.error(e); process.exit(1); });
"#;

fn browse(args: &[&str]) -> Value {
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("flow.js");
    std::fs::write(&script, FLOW).unwrap();
    let root = Command::new("npm").args(["root", "-g"]).output().unwrap();
    let o = Command::new("node")
        .env("NODE_PATH", String::from_utf8_lossy(&root.stdout).trim())
        .env("HOME", dir.path())
        .arg(&script)
        .args(args)
        .output()
        .expect("node and playwright-core (scripts/test.sh installs them)");
    assert!(o.status.success(), "{o:?}");
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {o:?}"))
}

/// The `(series, role, seq, value)` of every circle of an SVG chart, in order.
fn circles(svg: &str) -> Vec<Value> {
    let attr = |c: &str, name: &str| {
        c.split(&format!("{name}=\""))
            .nth(1)
            .and_then(|v| v.split('"').next())
            .map(str::to_owned)
    };
    svg.split("<circle ")
        .skip(1)
        .map(|c| {
            let c = c.split('>').next().unwrap();
            serde_json::json!([
                attr(c, "data-series"),
                attr(c, "data-role"),
                attr(c, "data-seq"),
                attr(c, "data-value")
            ])
        })
        .collect()
}

#[test]
fn in_the_browser_an_approver_approves_from_the_inbox_and_watches_the_canary_chart_grow() {
    let AwaitingApproval {
        world: _world,
        people,
        server,
        run,
        stop,
        traffic,
        releases: _releases,
    } = AwaitingApproval::start();
    let (bob, vic) = (people.token("bob"), people.token("vic"));
    let addr = server.addr.as_str();

    let base = format!("http://{addr}");
    let seen = browse(&[&base, &run, bob, vic]);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    traffic.join().unwrap();
    if let Some(why) = seen["skip"].as_str() {
        eprintln!("SKIPPED: headless Chromium cannot start here: {why}");
        return;
    }

    // The viewer: the run page without any button; a post refused by role and by origin.
    assert_eq!(seen["viewer_url"], format!("{base}/runs/{run}"), "{seen}");
    assert_eq!(seen["viewer_forms"], 0, "{seen}");
    assert_eq!(seen["viewer_state"], "waiting_for_approval", "{seen}");
    assert_eq!(seen["viewer_post_token"]["status"], 403, "{seen}");
    assert!(
        seen["viewer_post_token"]["body"]
            .as_str()
            .unwrap()
            .contains("deployer"),
        "{seen}"
    );
    assert_eq!(seen["viewer_post_cookie"]["status"], 403, "{seen}");

    // The approver: the inbox listed it, the plan page showed its digest and gate, the
    // approval was confirmed and went back to the run page.
    assert_eq!(seen["inbox_url"], format!("{base}/inbox"), "{seen}");
    assert_eq!(seen["inbox"], serde_json::json!([run]), "{seen}");
    assert_eq!(
        seen["plan_url"],
        format!("{base}/runs/{run}/plan"),
        "{seen}"
    );
    let (_, body) = get_as(addr, &format!("/api/v1/runs/{run}"), vic);
    let record: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(seen["plan_digest"], record["digest"], "{seen}");
    assert!(
        seen["plan_gates"]
            .as_str()
            .unwrap()
            .contains("1 approver, never the author"),
        "{seen}"
    );
    assert_eq!(seen["confirm"], format!("approve run {run}?"), "{seen}");
    assert_eq!(
        seen["after_approve"],
        format!("{base}/runs/{run}"),
        "{seen}"
    );
    assert_eq!(
        record["approvals"].as_array().map(Vec::len),
        Some(1),
        "{record}"
    );

    // The run went on to the end, and the chart grew while the page watched.
    assert!(seen["timeout"].is_null(), "{seen}");
    assert_eq!(seen["final_state"], "succeeded", "{seen}");
    assert_eq!(record["state"], "succeeded", "{seen}");
    let counts: Vec<u64> = seen["counts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_u64().unwrap())
        .collect();
    eprintln!("chart points the page showed, as they grew: {counts:?}");
    if counts.len() < 2 {
        let (_, j) = get_as(addr, &format!("/api/v1/runs/{run}/journal"), vic);
        eprintln!("JOURNAL {j}");
    }
    assert!(
        counts.windows(2).all(|w| w[0] < w[1]) && counts.iter().filter(|c| **c > 0).count() >= 2,
        "the chart grew as points were journaled: {counts:?}\n{seen}"
    );
    let (_, svg) = get_as(addr, &format!("/runs/{run}/chart.svg"), vic);
    assert_eq!(
        seen["final_points"],
        Value::Array(circles(&svg)),
        "the page ends with the server's chart"
    );
    assert!(
        seen["final_points"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p[0] == "error_rate"),
        "{seen}"
    );
}
