// The on-site supervision page: state pushed over a WebSocket, picture decoded by
// WebCodecs, small plots drawn by hand (no CDN, no library: this machine may be offline).
"use strict";

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.hash.slice(1) || location.search.slice(1));
const token = params.get("token") || "";
const page = {            // inspected by the browser test
  stateLog: [],           // {state, since_ns, t_ms (epoch ms, this browser)} per DOM change
  replies: [], updates: 0, frames: 0, decodeErrors: 0, noData: true,
};
window.__page = page;

let ws = null;
let staleAfterMs = 1000;
let historyS = 60;
let lastMsgAt = 0;        // performance.now() of the newest state push
let lastSnap = null;
let shownState = null;
let history = [];         // [server_ms, rtt, latency, jitter, loss%, video_age]

function fmtMs(v) { return v === null || v === undefined ? "-" : `${v.toFixed(1)} ms`; }

function connect() {
  ws = new WebSocket(`ws://${location.host}/ws?token=${encodeURIComponent(token)}`);
  ws.binaryType = "arraybuffer";
  ws.onmessage = (ev) => {
    if (typeof ev.data === "string") onText(JSON.parse(ev.data));
    else onFrame(ev.data);
  };
  ws.onclose = () => { ws = null; showNoData("(page server unreachable)"); setTimeout(connect, 500); };
}

function onText(msg) {
  if (msg.type === "hello") {
    staleAfterMs = msg.stale_after_ms; historyS = msg.history_s; history = msg.history;
  } else if (msg.type === "state") {
    lastMsgAt = performance.now(); page.updates++; render(msg);
  } else if (msg.type === "reply" || msg.type === "error") {
    page.replies.push(msg); showReply(msg);
  }
}

function showReply(msg) {
  const el = $("reply");
  if (msg.type === "error") { el.textContent = `Error: ${msg.error}`; el.className = "reply bad"; return; }
  if (msg.op === "press" && !msg.ok) {
    el.textContent = "E-STOP NOT DELIVERED - use the hardware emergency stop! (" + msg.text + ")";
  } else { el.textContent = msg.text; }
  el.className = msg.ok ? "reply good" : "reply bad";
}

function render(s) {
  lastSnap = s;
  if (s.sample && (!history.length || s.sample[0] > history[history.length - 1][0])) history.push(s.sample);
  while (history.length && history[0][0] < s.now_ms - historyS * 1000) history.shift();
  if (s.stale || !s.state) { showNoData(s.feed_age_ms === null ? "(no robot feed yet)" : `(robot feed ${(s.feed_age_ms / 1000).toFixed(1)} s old)`); }
  else { hideNoData(s); }
  $("feed-age").textContent = s.feed_age_ms === null ? "no data" : `data ${s.feed_age_ms.toFixed(0)} ms old`;
  if (s.link) {
    $("rtt").textContent = fmtMs(s.link.rtt_ms);
    $("latency").textContent = fmtMs(s.link.latency_ms);
    $("jitter").textContent = fmtMs(s.link.jitter_ms);
    $("loss").textContent = `${s.link.loss_pct.toFixed(1)} %`;
    $("video-age").textContent = fmtMs(s.link.video_age_ms);
    if (window.renderPaths) window.renderPaths(s);  // dual path: paths.js
    const fw = s.firmware;
    $("firmware").textContent = (fw.words.length ? fw.words.join(", ") : "no flags") + (fw.bad ? "  (PROBLEM)" : "");
    $("tracking").textContent = `${s.tracking_error_mm.toFixed(2)} mm`;
    $("scale").textContent = `${s.scale}`;
    $("loop-jitter").textContent = `${s.loop_jitter_us} us`;
  }
  const ls = s.last_stop;
  page.lastStop = ls;
  $("last-stop").textContent = ls ? `Last stop ${ls.age_s.toFixed(0)} s ago: ${ls.words} (${ls.code})` : "";
  const rec = s.recording;
  $("recording").textContent = !rec ? "off" : rec.state === "recording" ? `recording (${rec.video_frames} frames)` : `RECORDING ${rec.state.toUpperCase()}: ${rec.why}`;
  $("recording").className = rec && rec.state !== "recording" ? "alarm" : "";
  $("events").replaceChildren(...s.events.map((e) => {
    const li = document.createElement("li");
    // A warning (same state before and after) is not a transition: no arrow.
    const what = e.from === e.to ? `warning while ${e.to}` : `${e.from} \u2192 ${e.to}`;
    li.textContent = `${e.age_s.toFixed(1)} s ago: ${what}: ${e.words}` + (e.detail ? ` (${e.detail})` : "");
    if (e.from !== e.to && ["hold", "fault", "estop"].includes(e.to)) li.className = "trip";
    return li;
  }));
  renderVitals(s.vitals);
  const obs = s.observers;
  page.observers = obs;
  $("observers").textContent = !obs || obs.count === null ? `unknown (${obs ? obs.why : "no status"})`
    : obs.count === 0 ? "none" : `${obs.count}: ${obs.who.join(", ")}`;
  drawPlots();
}

function renderVitals(v) {
  // Decided on the robot side (operator_console.vitals_view): the page only shows it.
  if (!v) { $("vitals-line").textContent = "no patient monitor"; $("vitals-alarms").replaceChildren(); return; }
  const cells = v.cells.map((c) => {
    const span = document.createElement("span");
    span.textContent = `${c.label} ${c.text}${c.stale ? "?" : ""}`;
    span.className = c.stale ? "vital stale-vital" : "vital";
    if (c.stale) span.title = "not updated within its expected interval";
    return span;
  });
  if (!v.monitor_ok) {
    const no = document.createElement("span");
    no.textContent = "NO MONITOR"; no.className = "vital alarm-high";
    no.title = v.note; cells.unshift(no);
  }
  $("vitals-line").replaceChildren(...cells);
  $("vitals-alarms").replaceChildren(...v.alarms.map((a) => {
    const li = document.createElement("li");
    li.textContent = `${a.priority.toUpperCase()}: ${a.text} (${a.age_s.toFixed(0)} s)`;
    li.className = `alarm-${a.priority}`;
    return li;
  }));
}

function showState(state, why, cls, sinceNs) {
  const text = state.toUpperCase();
  if ($("state").textContent !== text) {
    $("state").textContent = text;
    $("banner").className = `banner ${cls}`;
    page.stateLog.push({ state, since_ns: sinceNs, t_ms: performance.timeOrigin + performance.now() });
  }
  $("why").textContent = why;
}

function hideNoData(s) {
  page.noData = false;
  $("nodata").hidden = true;
  document.body.classList.remove("stale");
  showState(s.state, s.why, s.state, s.state_since_ns);
  $("state-age").textContent = s.state_age_s === null ? "" : `for ${s.state_age_s.toFixed(1)} s`;
}

function showNoData(why) {
  page.noData = true;
  $("nodata").hidden = false;
  $("nodata-why").textContent = why;
  document.body.classList.add("stale");
  showState("robot state unknown", "The page is not receiving the robot's state. Do not rely on this page; watch the arm.", "unknown", null);
  $("state-age").textContent = "";
}

// NO DATA also when the pushes themselves stop (page server or robot node gone).
setInterval(() => {
  const age = performance.now() - lastMsgAt;
  if (!lastMsgAt || age > staleAfterMs) showNoData(ws ? `(no update for ${(age / 1000).toFixed(1)} s)` : "(page server unreachable)");
  updatePictureAge();
}, 100);

// ------------------------------------------------------------------ plots
const PLOTS = [["plot-rtt", 1, "#4fc3f7"], ["plot-latency", 2, "#81c784"], ["plot-jitter", 3, "#ffb74d"],
               ["plot-loss", 4, "#e57373"], ["plot-video", 5, "#ba68c8"]];
let plotDrawnAt = 0;
function drawPlots() {
  const now = performance.now();
  if (now - plotDrawnAt < 100) return;
  plotDrawnAt = now;
  const tEnd = lastSnap ? lastSnap.now_ms : 0;
  for (const [id, col, color] of PLOTS) {
    const c = $(id); const g = c.getContext("2d");
    g.clearRect(0, 0, c.width, c.height);
    const pts = history.filter((r) => r[col] !== null);
    let max = 1; for (const r of pts) max = Math.max(max, r[col]);
    g.strokeStyle = color; g.beginPath();
    pts.forEach((r, i) => {
      const x = c.width * (1 - (tEnd - r[0]) / (historyS * 1000));
      const y = c.height - 2 - (c.height - 12) * r[col] / max;
      if (i === 0) g.moveTo(x, y); else g.lineTo(x, y);
    });
    g.stroke();
    g.fillStyle = "#aaa"; g.font = "10px sans-serif"; g.fillText(`max ${max.toFixed(1)}  last ${historyS} s`, 3, 10);
  }
}

// ------------------------------------------------------------------ picture
let decoder = null;
let pictureAgeAtSend = null; let pictureRecvAt = 0;
function codecFromSps(au) {
  for (let i = 0; i + 4 < au.length; i++) {
    if (au[i] === 0 && au[i + 1] === 0 && au[i + 2] === 1 && (au[i + 3] & 0x1f) === 7) {
      const hex = (b) => b.toString(16).padStart(2, "0");
      return `avc1.${hex(au[i + 4])}${hex(au[i + 5])}${hex(au[i + 6])}`;
    }
  }
  return null;
}

function onFrame(buf) {
  const dv = new DataView(buf);
  if (buf.byteLength < 22 || dv.getUint8(0) !== 86) return;
  const ageUs = Number(dv.getBigInt64(9, true));
  const key = dv.getUint8(17) === 1;
  const w = dv.getUint16(18, true); const h = dv.getUint16(20, true);
  const au = new Uint8Array(buf, 22);
  if (typeof VideoDecoder === "undefined") { $("picture-age").textContent = "picture needs localhost or https (WebCodecs)"; return; }
  if (!decoder || decoder.state === "closed") {
    if (!key) return;
    const codec = codecFromSps(au);
    if (!codec) return;
    decoder = new VideoDecoder({
      output: (frame) => {
        const c = $("picture");
        if (c.width !== frame.displayWidth) { c.width = frame.displayWidth; c.height = frame.displayHeight; }
        c.getContext("2d").drawImage(frame, 0, 0);
        frame.close();
        page.frames++;
      },
      error: (e) => { page.decodeErrors++; decoder = null; console.warn("decode error", e); },
    });
    decoder.configure({ codec, codedWidth: w, codedHeight: h, optimizeForLatency: true });
  }
  try {
    decoder.decode(new EncodedVideoChunk({ type: key ? "key" : "delta", timestamp: Number(dv.getBigUint64(1, true)), data: au }));
    pictureAgeAtSend = ageUs / 1000; pictureRecvAt = performance.now();
  } catch (e) { page.decodeErrors++; decoder = null; }
}

function updatePictureAge() {
  if (pictureAgeAtSend === null) return;
  const age = pictureAgeAtSend + (performance.now() - pictureRecvAt);
  $("picture-age").textContent = `picture ${age.toFixed(0)} ms old` + (age > 1000 ? " - FROZEN" : "");
}

// ------------------------------------------------------------------ buttons
function send(body) {
  if (ws && ws.readyState === WebSocket.OPEN) { ws.send(JSON.stringify(body)); return true; }
  return false;
}
$("estop").addEventListener("click", () => {
  if (!send({ op: "press" })) showReply({ type: "reply", op: "press", ok: false, text: "page not connected" });
});
$("clear-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  send({ op: "clear", pin: $("pin").value });
  $("pin").value = "";
});

connect();
