// The engine's previews, without a page (Deno): loads the bundle served at --location,
// generates once with `preview: true`, and prints one JSON line: {ready, last (engine.last),
// png (the final image), previews: [{step, steps, decoder, image}]} or {error}.
// tests/web/test_preview_vae.py bundles it with esbuild, as wsd/checks/browser_run.py does
// measure.js, and runs
//   deno run --allow-net --allow-env --location http://127.0.0.1:PORT/ preview_probe.js '<job>'
// job: {settings}.
import "./deno_prelude.js";
import { Engine } from "../src/engine.js";

const { settings = {} } = JSON.parse(Deno.args[0] || "{}");
let result;
try {
  const engine = await Engine.load(new URL(".", location.href).href);
  const previews = [];
  const onProgress = (p) => {
    if (p.stage === "preview") {
      previews.push({ step: p.step, steps: p.steps, decoder: p.decoder, image: p.image });
    }
  };
  const png = await engine.generate({ ...settings, preview: true, onProgress });
  result = { ready: engine.info(), last: { ...engine.last, settings: undefined }, png,
             previews };
} catch (err) {
  result = { error: String(err && err.message ? err.message : err) };
}
console.log(JSON.stringify(result));
Deno.exit(0);
