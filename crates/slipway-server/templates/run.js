// Appends the run's journal entries as the server streams them (SSE), keeps the steps
// table and the run's state current from them, and stops at the `end` event: a finished
// run's stream closes, and EventSource must not reconnect then.
(function () {
  // Every action asks first: a click alone never pauses, aborts or rolls back a release.
  var forms = document.querySelectorAll("form.action");
  for (var i = 0; i < forms.length; i++) {
    forms[i].addEventListener("submit", function (ev) {
      var what = ev.target.getAttribute("data-action");
      // The form names its run: the plan page has no run-id element.
      var run = ev.target.getAttribute("data-run");
      if (!window.confirm(what + " run " + run + "?")) { ev.preventDefault(); }
    });
  }
  var list = document.getElementById("journal");
  var status = document.getElementById("stream-state");
  if (!list || !window.EventSource) { return; }
  // Journal event → the step status it records (StepStatus's names).
  var STEP = {
    step_started: "started", step_succeeded: "succeeded", step_failed: "failed",
    undo_started: "undo_started", undo_succeeded: "undone", undo_failed: "undo_failed"
  };
  function stepRow(step) {
    var rows = document.querySelectorAll("#steps tbody tr[data-step]");
    for (var i = 0; i < rows.length; i++) {
      if (rows[i].getAttribute("data-step") === step) { return rows[i]; }
    }
    var body = document.querySelector("#steps tbody");
    var empty = body.querySelector("tr.empty");
    if (empty) { empty.parentNode.removeChild(empty); }
    var tr = document.createElement("tr");
    tr.setAttribute("data-step", step);
    ["step", "status", "attempts", "updated"].forEach(function (c) {
      var td = document.createElement("td");
      td.className = c;
      tr.appendChild(td);
    });
    tr.cells[0].textContent = step;
    body.appendChild(tr);
    return tr;
  }
  function follow(n) {
    var e = n.event || {};
    if (STEP[e.event] && e.step) {
      var row = stepRow(e.step);
      row.cells[1].textContent = STEP[e.event];
      row.cells[1].className = "status " + STEP[e.event];
      if (e.attempt) { row.cells[2].textContent = String(e.attempt); }
      row.cells[3].textContent = n.at;
      row.setAttribute("data-live", "1");
    } else if (e.event === "state_changed" && e.to) {
      var st = document.getElementById("run-state");
      st.textContent = e.to;
      st.className = "state " + e.to;
    }
  }
  // The canary chart is server-rendered SVG: fetched again (at most every half second)
  // when a weight change or a measurement is journaled, parsed as SVG — never as HTML,
  // so nothing in it runs — and swapped in.
  var chart = document.getElementById("canary-chart");
  var chartTimer = null;
  function refreshChart() {
    chartTimer = null;
    fetch(chart.getAttribute("data-src"), { credentials: "same-origin" })
      .then(function (r) { return r.ok ? r.text() : null; })
      .then(function (text) {
        if (!text) { return; }
        var doc = new DOMParser().parseFromString(text, "image/svg+xml");
        var svg = doc.documentElement;
        if (svg.nodeName !== "svg") { return; }
        chart.replaceChildren(document.importNode(svg, true));
      })
      .catch(function () {});
  }
  var CHART_EVENTS = { weight_set: 1, measured: 1, canary_resumed: 1 };
  function chartMoved(n) {
    var e = n.event || {};
    if (!chart || e.event !== "step_progress" || !e.detail) { return; }
    if (CHART_EVENTS[e.detail.event] && !chartTimer) {
      chartTimer = window.setTimeout(refreshChart, 500);
    }
  }
  var es = new EventSource(list.getAttribute("data-events"));
  es.addEventListener("open", function () { status.textContent = "live"; });
  es.addEventListener("journal", function (e) {
    var n = JSON.parse(e.data);
    var li = document.createElement("li");
    li.className = "event";
    li.setAttribute("data-seq", String(n.seq));
    var kind = (n.event && n.event.event) || "event";
    var step = (n.event && n.event.step) ? " " + n.event.step : "";
    // textContent, never innerHTML: journal text comes from specs and step output.
    li.textContent = n.at + " " + kind + step;
    list.appendChild(li);
    follow(n);
    chartMoved(n);
  });
  es.addEventListener("end", function (e) {
    es.close();
    var d = JSON.parse(e.data);
    status.textContent = d.state ? "ended: " + d.state : "ended: " + (d.error || "");
  });
}());
