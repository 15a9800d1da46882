// Glass-to-glass in headless Chromium for cloudphone-bench (src/viewer_chromium.rs).
//
// Usage: node glass.mjs <glass.html url with its query> <skip_ms> <measure_ms> [first_frame_timeout_ms]
// Prints one JSON object per line on stdout:
//   {"event":"first_frame","ms":…}  hello sent → first requestVideoFrameCallback
//   {"event":"measuring"}           after skip_ms more, the window starts
//   {"event":"done","result":{…}}   glass.html's collect() after measure_ms (per-frame samples,
//                                   and libwebrtc's inbound-rtp averages over the window as avg_*)
//   {"event":"error","error":"…"}   instead (exit status 1)
// Page console output goes to stderr. Nothing talks to the page during the window.
// CHROMIUM overrides the browser, CHROMIUM_EXTRA_ARGS adds flags (space-separated),
// GLASS_DEBUG_DIR saves the first unreadable frames' block means and a page screenshot.
import { chromium } from "playwright-core";

const [url, skipArg, measureArg, timeoutArg] = process.argv.slice(2);
if (!url || !skipArg || !measureArg) {
  console.error("usage: node glass.mjs <page-url> <skip_ms> <measure_ms> [first_frame_timeout_ms]");
  process.exit(2);
}
const out = (obj) => process.stdout.write(JSON.stringify(obj) + "\n");
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// machine.md's headless flags (playwright adds --headless and a throwaway --user-data-dir).
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  headless: true,
  args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--autoplay-policy=no-user-gesture-required",
         ...(process.env.CHROMIUM_EXTRA_ARGS ? process.env.CHROMIUM_EXTRA_ARGS.split(" ") : [])],
});
let status = 0;
try {
  const page = await browser.newPage({ viewport: { width: 800, height: 1000 } });
  page.on("console", (m) => console.error(`[page] ${m.text()}`));
  page.on("pageerror", (e) => console.error(`[page error] ${e}`));
  await page.goto(url);
  const deadline = Date.now() + Number(timeoutArg || 20000);
  for (;;) {
    const s = await page.evaluate(() => ({ ff: window.glass.firstFrameMs, status: window.glass.status, error: window.glass.error }));
    if (s.ff !== null) { out({ event: "first_frame", ms: s.ff }); break; }
    if (s.error) throw new Error(s.error);
    if (Date.now() > deadline) throw new Error(`no frame within ${timeoutArg || 20000} ms (status ${s.status})`);
    await sleep(10);
  }
  await sleep(Number(skipArg));
  await page.evaluate(() => window.glass.mark());
  out({ event: "measuring" });
  await sleep(Number(measureArg));
  const result = await page.evaluate(() => window.glass.collect());
  // GLASS_DEBUG_DIR (with debug=1 in the page URL): the first unreadable corners' block means
  // (and, with the canvas reader, the corner as a PNG).
  if (process.env.GLASS_DEBUG_DIR) {
    const fs = await import("node:fs");
    const shots = await page.evaluate(() => window.glass.debugShots);
    await page.screenshot({ path: `${process.env.GLASS_DEBUG_DIR}/page-${Date.now()}.png` });
    shots.forEach((shot, i) => {
      const base = `${process.env.GLASS_DEBUG_DIR}/unreadable-${Date.now()}-${i}`;
      if (shot.png) fs.writeFileSync(`${base}.png`, Buffer.from(shot.png.split(",")[1], "base64"));
      fs.writeFileSync(`${base}.json`, JSON.stringify({ ...shot, png: undefined }));
    });
  }
  const s = await page.evaluate(() => ({ status: window.glass.status, error: window.glass.error }));
  if (s.error) throw new Error(s.error);
  out({ event: "done", result });
} catch (e) {
  out({ event: "error", error: String(e) });
  status = 1;
}
await browser.close();
process.exit(status);
