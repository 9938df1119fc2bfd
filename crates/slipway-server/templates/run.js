// Appends the run's journal entries as the server streams them (SSE), and stops at the
// `end` event: a finished run's stream closes, and EventSource must not reconnect then.
(function () {
  var list = document.getElementById("journal");
  var status = document.getElementById("stream-state");
  if (!list || !window.EventSource) { return; }
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
  });
  es.addEventListener("end", function (e) {
    es.close();
    var d = JSON.parse(e.data);
    status.textContent = d.state ? "ended: " + d.state : "ended: " + (d.error || "");
  });
}());
