// The on-site staff's push-to-talk: hold the button (or the T key) to talk to the
// surgeon's console(s); their voices play here. Raw 20 ms PCM frames go over the
// page's second WebSocket (/intercom, same token); the page server encodes Opus.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const tok = new URLSearchParams(location.hash.slice(1) || location.search.slice(1)).get("token") || "";
  const RATE = 48000;
  const PLAYOUT_S = 0.04;          // jitter buffer before the first frame of a talk spurt
  const MAX_BUFFERED = 8 * 1928;   // WebSocket backlog beyond which frames are dropped
  const ic = {                     // inspected by the browser test
    allowed: false, why: "", talking: false, sent: 0, dropped: 0, heard: 0,
    heardLoud: 0, speakers: {}, refusals: [],
  };
  window.__intercom = ic;
  let ws = null; let ctx = null; let mic = null; let nextPlay = 0;

  function status(text, cls) { $("intercom-status").textContent = text; $("intercom-status").className = cls || ""; }

  function connect() {
    ws = new WebSocket(`ws://${location.host}/intercom?token=${encodeURIComponent(tok)}`);
    ws.binaryType = "arraybuffer";
    ws.onmessage = (ev) => {
      if (typeof ev.data !== "string") { play(ev.data); return; }
      const msg = JSON.parse(ev.data);
      if (msg.type === "intercom") {
        ic.allowed = msg.allowed; ic.why = msg.why;
        $("talk").disabled = !msg.allowed;
        status(msg.allowed ? "ready: hold to talk" : `intercom off: ${msg.why}`, msg.allowed ? "" : "bad");
      } else if (msg.type === "talk" && !msg.ok) {
        ic.refusals.push(msg.why); status(`not sent: ${msg.why}`, "bad");
      }
    };
    ws.onclose = () => { ws = null; ic.allowed = false; $("talk").disabled = true; status("intercom: page server unreachable", "bad"); setTimeout(connect, 1000); };
  }

  let ctxReady = null;
  function audio() {  // one context, its worklet loaded once (two callers may race)
    if (!ctxReady) {
      ctx = new AudioContext({ sampleRate: RATE, latencyHint: "interactive" });
      ctxReady = ctx.audioWorklet.addModule("/static/mic-worklet.js").then(() => ctx);
    }
    return ctxReady;
  }

  let micReady = null;
  function openMic() {  // once; a failure may be retried with the next press
    if (!micReady) micReady = startMic().catch((e) => { micReady = null; throw e; });
    return micReady;
  }

  async function startMic() {
    if (!navigator.mediaDevices) throw new Error("the microphone needs localhost or https");
    const c = await audio();
    const stream = await navigator.mediaDevices.getUserMedia({
      audio: { echoCancellation: true, noiseSuppression: false, autoGainControl: false, channelCount: 1 } });
    const node = new AudioWorkletNode(c, "mic-frames");
    node.port.onmessage = (ev) => send(ev.data);
    c.createMediaStreamSource(stream).connect(node);
    mic = { stream, node };
  }

  function send(pcmBuffer) {
    if (!ic.talking || !ws || ws.readyState !== WebSocket.OPEN) return;
    if (ws.bufferedAmount > MAX_BUFFERED) { ic.dropped++; return; }  // never a growing backlog
    const out = new Uint8Array(8 + pcmBuffer.byteLength);
    new DataView(out.buffer).setFloat64(0, performance.timeOrigin + performance.now(), true);
    out.set(new Uint8Array(pcmBuffer), 8);
    ws.send(out.buffer);
    ic.sent++;
  }

  function play(buf) {
    const bytes = new Uint8Array(buf);
    const n = bytes[0];
    const speaker = new TextDecoder().decode(bytes.subarray(1, 1 + n));
    const pcm = new Int16Array(buf.slice(1 + n));
    const f = new Float32Array(pcm.length);
    let sq = 0;
    for (let i = 0; i < pcm.length; i++) { f[i] = pcm[i] / 32768; sq += f[i] * f[i]; }
    ic.heard++; ic.speakers[speaker] = (ic.speakers[speaker] || 0) + 1;
    if (Math.sqrt(sq / Math.max(1, pcm.length)) > 0.01) ic.heardLoud++;
    $("intercom-heard").textContent = `${speaker} speaking`;
    if (!ctx || ctx.state !== "running") {  // browsers play nothing before the page is touched
      $("intercom-heard").textContent = `${speaker} speaking - touch this box to hear`; return;
    }
    const b = ctx.createBuffer(1, f.length, RATE);
    b.copyToChannel(f, 0);
    const src = ctx.createBufferSource();
    src.buffer = b; src.connect(ctx.destination);
    const now = ctx.currentTime;
    if (nextPlay < now || nextPlay > now + 0.3) nextPlay = now + PLAYOUT_S;  // bounded delay
    src.start(nextPlay);
    nextPlay += b.duration;
  }

  async function talk(on) {
    if (on === ic.talking) return;
    if (on) {
      try { await openMic(); if (ctx.state !== "running") await ctx.resume(); } catch (e) {
        status(`microphone not available: ${e.message || e}`, "bad"); return;
      }
    }
    ic.talking = on;
    if (ws && ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify({ op: "ptt", on }));
    $("talk").classList.toggle("talking", on);
    status(on ? "TALKING to the surgeon" : "ready: hold to talk", on ? "good" : "");
  }

  // A touch of the intercom box unlocks playback (the browser's autoplay rule). Only of
  // this box: starting the audio device must never come near the e-stop button's click.
  $("intercom").addEventListener("pointerdown", () => { audio().then((c) => c.resume()).catch(() => {}); });
  const btn = $("talk");
  btn.addEventListener("pointerdown", (ev) => { ev.preventDefault(); talk(true); });
  for (const e of ["pointerup", "pointerleave", "pointercancel"]) btn.addEventListener(e, () => talk(false));
  document.addEventListener("keydown", (ev) => { if (ev.key === "t" && !ev.repeat && document.activeElement.tagName !== "INPUT") talk(true); });
  document.addEventListener("keyup", (ev) => { if (ev.key === "t") talk(false); });
  connect();
})();
