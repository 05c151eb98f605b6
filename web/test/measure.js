// The app's engine measured without a page, for WebGPU runtimes that are not browsers (Deno,
// whose WebGPU is wgpu). wsd/checks/browser_run.py bundles it with esbuild and runs
//   deno run --allow-net --allow-env --location http://127.0.0.1:PORT/ measure.js '<job JSON>'
// job: {settings, runs, loadOnly}. Loads the bundle served at --location, generates `runs`
// times (none with loadOnly: a second process with the same DENO_DIR is the warm reload, its
// weights from Cache Storage). Prints one JSON line: {ready, runs: [engine.last...], png,
// userAgent} (png: the last image) or {error}. job.jobs, a list of settings, generates once
// with each instead and adds {jobs: [{png, settings} or {error}]} (e.g. image-to-image cases,
// their images as data URLs, with errors that are results).
import "./deno_prelude.js";
import { Engine } from "../src/engine.js";

const { settings = {}, runs = 1, loadOnly = false, jobs = null } =
  JSON.parse(Deno.args[0] || "{}");
let result;
try {
  const engine = await Engine.load(new URL(".", location.href).href);
  const ready = engine.info(); // what the page's window.wsd.ready resolves to
  const lasts = [];
  let png = null;
  const results = [];
  for (const job of jobs || []) {
    try {
      results.push({ png: await engine.generate(job), settings: engine.last.settings });
    } catch (err) {
      results.push({ error: String(err && err.message ? err.message : err) });
    }
  }
  for (let i = 0; !loadOnly && !jobs && i < runs; i++) {
    png = await engine.generate(settings);
    lasts.push({ ...engine.last, settings: undefined });
  }
  result = { ready, runs: lasts, png, userAgent: navigator.userAgent,
             ...(jobs ? { jobs: results } : {}) };
} catch (err) {
  result = { error: String(err && err.message ? err.message : err) };
}
console.log(JSON.stringify(result));
Deno.exit(0);
