// The page: wires the form, progress and image to the Engine, and publishes the JS API
//
//   await window.wsd.ready                 -> {model, dtype, height, width, adapter, ...}
//   await window.wsd.generate({prompt, negativePrompt, steps, guidanceScale, scheduler, seed,
//                              preview, previewEvery, onProgress})  -> PNG data URL
//   await window.wsd.reload()              -> a new Engine (after a lost GPU device), as ready
//
// (documented in README.md, "Use it from JavaScript").

import { DEFAULTS, Engine, SAMPLERS, checkSettings } from "./engine.js";
import { SCHEDULERS } from "./schedulers/index.js";

const $ = (id) => document.getElementById(id);
const MIB = 1 << 20;

function fmtMs(ms) {
  return ms < 1000 ? `${Math.round(ms)} ms` : `${(ms / 1000).toFixed(1)} s`;
}

function showError(err) {
  const box = $("error");
  box.textContent = err && err.message ? err.message : String(err);
  box.hidden = false;
  console.error(err);
}

function showWarning(message) {
  const box = $("warning");
  box.textContent = box.hidden ? `warning: ${message}` : `${box.textContent}\nwarning: ${message}`;
  box.hidden = false;
}

function setStatus(text, fraction) {
  $("status").textContent = text;
  const bar = $("progress");
  if (fraction === undefined) bar.removeAttribute("value");
  else bar.value = fraction;
}

const SHOWN = {
  config: () => ["Reading the bundle config ..."],
  device: () => ["Opening the GPU ..."],
  runtime: () => ["Loading the model library ..."],
  weights: (p) => [`Weights: ${(p.loaded / MIB).toFixed(1)} / ${(p.total / MIB).toFixed(1)} MiB` +
                   (p.fromCache ? ` (${(p.fromCache / MIB).toFixed(1)} MiB from the browser cache)` : ""),
                   p.total ? p.loaded / p.total : undefined],
  shaders: (p) => [p.text || "Compiling GPU shaders ...", p.progress],
  tokenizer: () => ["Loading the tokenizer ..."],
  encode: () => ["Encoding the prompt ...", 0],
  denoise: (p) => [`Denoising: step ${p.step} / ${p.steps}, ${fmtMs(p.elapsedMs)} elapsed, ` +
                   `about ${fmtMs(p.remainingMs)} left`, p.step / p.steps],
  decode: () => ["Decoding the image ...", 1],
  done: (p) => [`Done in ${fmtMs(p.ms)}.`, 1],
};

// First time each stage was reported, in ms since the page started (window.wsd.timeline).
const timeline = {};
const latest = {}; // the latest report of each stage (window.wsd.progress)

function onProgress(p) {
  if (!(p.stage in timeline)) timeline[p.stage] = Math.round(performance.now());
  latest[p.stage] = p;
  if (p.stage === "warning") {
    showWarning(p.message);
    return;
  }
  if (p.stage === "preview") {
    $("image").src = p.image;
    $("image").hidden = false;
    return;
  }
  const shown = SHOWN[p.stage];
  if (shown) setStatus(...shown(p));
}

function formSettings() {
  return {
    prompt: $("prompt").value,
    negativePrompt: $("negative").value,
    steps: Number($("steps").value),
    guidanceScale: Number($("guidance").value),
    scheduler: $("scheduler").value,
    seed: $("seed").value.trim(),
    preview: $("preview").checked,
  };
}

/** The form shows the settings of the image on the page, also when the API made it. */
function showSettings(s) {
  $("prompt").value = s.prompt;
  $("negative").value = s.negativePrompt;
  $("steps").value = s.steps;
  $("guidance").value = s.guidanceScale;
  $("scheduler").value = s.scheduler;
  $("seed").value = String(s.seed);
}

function fillSamplers(names) {
  $("scheduler").replaceChildren(...names.map((name) => {
    const option = document.createElement("option");
    option.value = option.textContent = name;
    return option;
  }));
}

function fillForm() {
  fillSamplers(Object.keys(SCHEDULERS));
  $("dice").addEventListener("click", () => {
    const words = crypto.getRandomValues(new Uint32Array(1));
    $("seed").value = String(words[0]);
  });
}

async function main() {
  fillForm();
  const base = new URL(".", location.href).href;
  let engine = null;
  let ready = null;
  let shownDefaults = false;

  // Load an Engine (again, after a lost device: the weights come from the browser's cache).
  const load = () => {
    if (engine) engine.dispose();
    engine = null;
    $("generate").disabled = true;
    $("recover").hidden = true;
    ready = Engine.load(base, onProgress).then((e) => {
      if (!shownDefaults) { // the bundle's defaults (wsd-config.json "settings"),
        shownDefaults = true;          // once: a reload after a loss keeps the form as it is
        fillSamplers(SAMPLERS);        // only those that apply to the model
        $("scheduler").value = DEFAULTS.scheduler;
        $("steps").value = DEFAULTS.steps;
        $("guidance").value = DEFAULTS.guidanceScale;
        $("seed").value = DEFAULTS.seed;
      }
      engine = e;
      const info = e.info();
      $("model").textContent = `${info.model} · ${info.dtype} · ${info.width}x${info.height} · ` +
        `${info.adapter} · loaded in ${fmtMs(e.loadMs)}`;
      setStatus("Ready.", 1);
      $("error").hidden = true;
      $("generate").disabled = false;
      e.whenLost.then((message) => { // a loss between generations shows at once
        if (engine !== e) return;
        setStatus("The GPU device was lost.", 0);
        showError(new Error(message));
        $("generate").disabled = true;
        $("recover").hidden = false;
      });
      return info;
    });
    ready.catch((err) => {
      setStatus("Cannot run here.", 0);
      showError(err);
    });
    return ready;
  };
  load();

  const generate = async (options = {}) => {
    await ready;
    showSettings(checkSettings(options)); // reject bad settings before queueing
    const user = options.onProgress;
    const url = await engine.generate({ ...options, onProgress: (p) => {
      onProgress(p);
      if (user) user(p);
    } });
    $("image").src = url;
    $("image").hidden = false;
    $("download").href = url;
    $("download").hidden = false;
    return url;
  };

  window.wsd = {
    get ready() { return ready; },
    generate,
    reload: load,
    timeline,
    progress: latest,
    get config() { return engine && engine.config; },
    get engine() { return engine; }, // internals, for debugging and tests
    get last() { return engine && engine.last; },
  };

  $("recover").addEventListener("click", () => {
    $("error").hidden = true;
    load();
  });
  $("form").addEventListener("submit", async (event) => {
    event.preventDefault();
    $("error").hidden = true;
    $("generate").disabled = true;
    let failed = false;
    try {
      await generate(formSettings());
      for (const w of engine.last.warnings) showError(new Error(`warning: ${w}`));
    } catch (err) {
      failed = true;
      showError(err);
    } finally {
      const lost = engine && engine.lost;
      $("generate").disabled = Boolean(lost);
      if (failed && lost) $("recover").hidden = false;
    }
  });
}

main();
