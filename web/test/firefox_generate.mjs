// Drives Firefox ESR (headless, WebGPU enabled) with puppeteer-core over WebDriver BiDi:
// opens the page at argv[2], waits for window.wsd.ready, calls window.wsd.generate with the
// JSON settings in argv[3], saves a screenshot to argv[4] and prints one JSON line:
// {ready, png, timeline} or {error, shown: the page's error text}.
import puppeteer from "puppeteer-core";

const [url, settingsJson, screenshot] = process.argv.slice(2);
const browser = await puppeteer.launch({
  browser: "firefox",
  executablePath: process.env.WSD_FIREFOX || "/usr/bin/firefox-esr",
  headless: true,
  userDataDir: process.env.WSD_FIREFOX_PROFILE,
  extraPrefsFirefox: {
    "dom.webgpu.enabled": true,
    "gfx.webgpu.ignore-blocklist": true,
    "network.proxy.type": 0,
  },
});
let result;
try {
  const page = await browser.newPage();
  page.on("console", (msg) => process.stderr.write(`console: ${msg.text()}\n`));
  await page.goto(url);
  const ready = await page.evaluate(() => window.wsd.ready.then((r) => r, (e) => ({ error: e.message })));
  if (ready.error) {
    result = { error: ready.error, shown: await page.evaluate(() => document.getElementById("error").textContent) };
  } else {
    const settings = JSON.parse(settingsJson);
    const png = await page.evaluate((s) => window.wsd.generate(s), settings);
    result = { ready, png, timeline: await page.evaluate(() => window.wsd.timeline) };
  }
  if (screenshot) await page.screenshot({ path: screenshot });
} catch (err) {
  result = { error: String(err && err.message ? err.message : err) };
} finally {
  await browser.close();
}
process.stdout.write(JSON.stringify(result) + "\n");
