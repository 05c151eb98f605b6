// The app's engine without the page, for WebGPU runtimes that are not browsers (Deno, whose
// WebGPU is wgpu, the implementation inside Firefox). Bundled by esbuild like app.js, then:
//   deno run --allow-net --location http://127.0.0.1:PORT/ headless.bundle.js '<settings JSON>'
// Prints one JSON line: {ready, png, stats} or {error}.
import "./deno_prelude.js";
import { Engine } from "../src/engine.js";

const settings = JSON.parse(Deno.args[0] || "{}");
let result;
try {
  const engine = await Engine.load(new URL(".", location.href).href);
  const png = await engine.generate(settings);
  result = { ready: { model: engine.config.model, dtype: engine.config.dtype,
                      adapter: engine.adapterDescription, loadMs: engine.loadMs },
             png, last: { ...engine.last, settings: undefined } };
} catch (err) {
  result = { error: String(err && err.message ? err.message : err) };
}
console.log(JSON.stringify(result));
Deno.exit(0);
