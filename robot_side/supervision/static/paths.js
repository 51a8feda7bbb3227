// Dual path (issue 16): one row per network path, as the robot measures it
// (Telemetry.paths: round trip, one-way latency, jitter, loss, live or down).
// A separate file: page.js calls window.renderPaths(state) on every push.
// The figures are as old as the feed (the panel's title says so); stale, they fade
// with the rest of the page, and "robot state unknown" covers them.
(function () {
  function ms(v) { return v === null || v === undefined ? "-" : `${v.toFixed(1)} ms`; }
  function cell(tr, text, cls) {
    const td = document.createElement("td");
    td.textContent = text;
    if (cls) td.className = cls;
    tr.appendChild(td);
  }
  window.renderPaths = function (s) {
    const section = document.getElementById("paths");
    const paths = s.link && s.link.paths;
    if (!section) return;
    section.hidden = !paths;
    if (!paths) return;
    document.getElementById("paths-age").textContent =
      s.feed_age_ms === null ? "no data" : `data ${s.feed_age_ms.toFixed(0)} ms old`;
    const live = paths.filter((p) => p.live).length;
    const note = document.getElementById("paths-note");
    note.textContent = live >= 2 ? "" : (live === 1
      ? "Down to one path: no redundancy (no hold; one more failure stops the arm)"
      : "No path delivers commands");
    note.className = live >= 2 ? "" : "alarm";
    const body = document.getElementById("paths-rows");
    body.replaceChildren();
    for (const p of paths) {
      const tr = document.createElement("tr");
      tr.dataset.path = p.name;
      cell(tr, p.name);
      cell(tr, p.live ? "live" : "DOWN", p.live ? "" : "alarm");
      cell(tr, ms(p.rtt_ms));
      cell(tr, ms(p.latency_ms));
      cell(tr, ms(p.jitter_ms));
      cell(tr, `${p.loss_pct.toFixed(1)} %`);
      body.appendChild(tr);
    }
  };
})();
