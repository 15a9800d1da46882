// Drives the player page in headless Chromium for the Rust streaming tests.
//
// Usage: node viewer.mjs <page-url>
// Reads one JSON command per line on stdin and answers with one JSON line on stdout:
//   {"cmd":"wait_frames","n":30,"timeout_ms":20000} → {"ok":true,"stats":{…}} once framesDecoded ≥ n
//   {"cmd":"tap","x":0.1,"y":0.2}                  → a real mouse click on the video at that point
//   {"cmd":"stats"}                                → {"ok":true,"stats":{…},"status":"connected"}
//   {"cmd":"fill"|"select","selector":"#user","value":"dev"}, {"cmd":"click","selector":"#loginBtn"},
//   {"cmd":"wait_for","selector":"#instances option[value='…']"}  → {"ok":true} (page.fill, …);
//     optional "state" ("attached" by default, or "visible") and "timeout_ms"
//   {"cmd":"goto","url":"…"}                       → {"ok":true} once loaded (relative to the page)
//   {"cmd":"text","selector":"#error"}             → {"ok":true,"text":"…"} (textContent, "" if absent)
//   {"cmd":"eval","expr":"document.title"}         → {"ok":true,"value":…} (any JSON value)
//   {"cmd":"download","selector":"#csvBtn"}        → {"ok":true,"filename":"…","content":"…"} clicks,
//     waits for the download it starts, returns its name and (UTF-8) content
//   {"cmd":"screenshot","path":"/tmp/x.png","full_page":true} → {"ok":true}
//   {"cmd":"viewport","width":1200,"height":900}   → {"ok":true}
//   {"cmd":"quit"}
// Environment: CHROMIUM (the browser binary), VIEWER_TIMEZONE (an IANA zone for the page, e.g.
// Asia/Shanghai; the system's when unset). Page console output goes to stderr.
import { chromium } from "playwright-core";
import readline from "node:readline";

const url = process.argv[2];
if (!url) { console.error("usage: node viewer.mjs <page-url>"); process.exit(2); }
const reply = (obj) => process.stdout.write(JSON.stringify(obj) + "\n");

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  headless: true,
  args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--autoplay-policy=no-user-gesture-required"],
  // playwright gives the browser a throwaway profile dir itself (machine.md's --user-data-dir).
});
const page = await browser.newPage({ viewport: { width: 800, height: 1000 }, acceptDownloads: true,
  ...(process.env.VIEWER_TIMEZONE ? { timezoneId: process.env.VIEWER_TIMEZONE } : {}) });
page.on("console", (m) => console.error(`[page] ${m.text()}`));
page.on("pageerror", (e) => console.error(`[page error] ${e}`));
await page.goto(url);
reply({ ok: true, event: "loaded" });

const stats = () => page.evaluate(async () => {
  // Fresh figures, not the overlay's last once-a-second sample.
  await window.cloudphone.collectStats().catch(() => {});
  return { stats: window.cloudphone.stats, status: window.cloudphone.status,
           error: window.cloudphone.error || null, bye: window.cloudphone.byeReason || null };
});

async function handle(cmd) {
  switch (cmd.cmd) {
    case "wait_frames": {
      const deadline = Date.now() + (cmd.timeout_ms || 20000);
      for (;;) {
        const s = await stats();
        if (s.stats && s.stats.framesDecoded >= cmd.n) return { ok: true, ...s };
        if (Date.now() > deadline || s.status === "error" || s.status === "bye") return { ok: false, ...s };
        await new Promise((r) => setTimeout(r, 20));
      }
    }
    case "tap": {
      // Where the point is on screen, inside the letterboxed picture.
      const p = await page.evaluate(({ x, y }) => {
        const v = document.getElementById("video"), r = v.getBoundingClientRect();
        const s = Math.min(r.width / v.videoWidth, r.height / v.videoHeight);
        const w = v.videoWidth * s, h = v.videoHeight * s;
        return { x: r.left + (r.width - w) / 2 + x * w, y: r.top + (r.height - h) / 2 + y * h };
      }, cmd);
      await page.mouse.move(p.x, p.y);
      await page.mouse.down();
      await page.mouse.up();
      return { ok: true, at: p };
    }
    case "stats": return { ok: true, ...(await stats()) };
    case "fill": await page.fill(cmd.selector, cmd.value); return { ok: true };
    case "click": await page.click(cmd.selector); return { ok: true };
    case "select": await page.selectOption(cmd.selector, cmd.value); return { ok: true };
    case "wait_for": await page.waitForSelector(cmd.selector, { state: cmd.state || "attached", timeout: cmd.timeout_ms || 20000 }); return { ok: true };
    case "goto": await page.goto(new URL(cmd.url, page.url()).href); return { ok: true };
    case "text": return { ok: true, text: (await page.locator(cmd.selector).first().textContent({ timeout: cmd.timeout_ms || 5000 }).catch(() => null)) ?? "" };
    case "eval": return { ok: true, value: await page.evaluate(cmd.expr) };
    case "download": {
      const [download] = await Promise.all([
        page.waitForEvent("download", { timeout: cmd.timeout_ms || 20000 }),
        page.click(cmd.selector),
      ]);
      const { readFile } = await import("node:fs/promises");
      const failure = await download.failure();
      if (failure) return { ok: false, error: failure };
      return { ok: true, filename: download.suggestedFilename(), content: await readFile(await download.path(), "utf8") };
    }
    case "screenshot": await page.screenshot({ path: cmd.path, fullPage: !!cmd.full_page }); return { ok: true };
    case "viewport": await page.setViewportSize({ width: cmd.width, height: cmd.height }); return { ok: true };
    case "quit": await browser.close(); reply({ ok: true }); process.exit(0);
    default: return { ok: false, error: `unknown command ${cmd.cmd}` };
  }
}

const rl = readline.createInterface({ input: process.stdin });
for await (const line of rl) {
  if (!line.trim()) continue;
  try { reply(await handle(JSON.parse(line))); } catch (e) { reply({ ok: false, error: String(e) }); }
}
await browser.close();
