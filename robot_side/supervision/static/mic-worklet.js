// Cuts the microphone into 20 ms frames (960 samples at 48 kHz) of int16 for the
// intercom; each frame goes to the page with the time it was complete.
"use strict";

class MicFrames extends AudioWorkletProcessor {
  constructor() {
    super();
    this.frame = new Int16Array(960);
    this.fill = 0;
  }

  process(inputs) {
    const ch = inputs[0] && inputs[0][0];
    if (!ch) return true;
    for (let i = 0; i < ch.length; i++) {
      const v = Math.max(-1, Math.min(1, ch[i]));
      this.frame[this.fill++] = v < 0 ? v * 32768 : v * 32767;
      if (this.fill === this.frame.length) {
        this.port.postMessage(this.frame.buffer, [this.frame.buffer]);
        this.frame = new Int16Array(960);
        this.fill = 0;
      }
    }
    return true;
  }
}

registerProcessor("mic-frames", MicFrames);
