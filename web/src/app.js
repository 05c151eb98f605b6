// The page: wires the form, progress and image to the Engine, and publishes the JS API
//
//   await window.wsd.ready                 -> {model, dtype, height, width, adapter, ...}
//   await window.wsd.generate({prompt, negativePrompt, steps, guidanceScale, scheduler, seed,
//                              preview, previewEvery, onProgress, signal})  -> PNG data URL
//                              (with the settings in a tEXt "parameters" chunk, as the CLI's)
//   await window.wsd.reload()              -> a new Engine (after a lost GPU device), as ready
//   window.wsd.history                     -> the image history (history.js), newest first
//
// (documented in README.md, "Use it from JavaScript").
//
// The page around it: the image scaled up to a readable size (whole multiples, crisp pixels,
// for small models), a history of every image generated (IndexedDB, history.js), a download
// that carries the settings, an input image (drop, paste, pick) with its strength, and a
// cancel button (an AbortSignal the engine checks between steps).

import { DEFAULTS, Engine, SAMPLERS, checkSettings } from "./engine.js";
import { History, entryURL } from "./history.js";
import { dataURL, fromDataURL, readText, withText } from "./png.js";
import { SCHEDULERS } from "./schedulers/index.js";

const $ = (id) => document.getElementById(id);
const MIB = 1 << 20;
// The image is shown at least this wide (CSS px) when the model's images are smaller: by a
// whole factor up to SHOWN_PX with crisp pixels, else smoothly to MIN_SHOWN_PX.
const SHOWN_PX = 512;
const MIN_SHOWN_PX = 384;

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

// ------------------------------------------------------------------- the image on the page

/** Size the shown image once its pixels are known: small images scaled up (see SHOWN_PX),
 * large ones at their natural size; never wider than the page (CSS max-width). */
function fitImage() {
  const img = $("image");
  const w = img.naturalWidth;
  if (!w) return;
  const factor = Math.floor(SHOWN_PX / w);
  let width = w;
  if (factor >= 2) width = w * factor;
  else if (w < MIN_SHOWN_PX) width = MIN_SHOWN_PX;
  img.style.width = `${width}px`;
  img.classList.toggle("pixelated", factor >= 2);
}

let shownURL = null; // the final image on the page (a preview replaces it until done)

/** Show a finished image: on the page, and as the download (file named by its seed). */
function showImage(url, settings) {
  shownURL = url;
  $("image").src = url;
  $("image").alt = settings && settings.prompt ? `generated image: ${settings.prompt}`
    : "generated image";
  $("image").hidden = false;
  $("download").href = url;
  $("download").download = settings ? `wsd-${settings.seed}.png` : "wsd.png";
  $("download").hidden = false;
}

// ------------------------------------------------------------------- settings <-> the form

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
  if ([...$("scheduler").options].some((o) => o.value === s.scheduler)) {
    $("scheduler").value = s.scheduler;
  }
  $("seed").value = String(s.seed);
  if (typeof s.strength === "number") setStrength(s.strength);
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

// ------------------------------------------------------------------- the PNG's settings

/** JSON as Python's json.dumps writes it (", " and ": ", non-ASCII as \uXXXX, so that the
 * text is Latin-1 for tEXt); BigInt as its decimal digits (an exact JSON integer). */
export function pythonJSON(value) {
  if (typeof value === "bigint") return value.toString();
  if (typeof value === "string") {
    return JSON.stringify(value).replace(/[\u0080-\uffff]/g,
      (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, "0")}`);
  }
  if (Array.isArray(value)) return `[${value.map(pythonJSON).join(", ")}]`;
  if (value && typeof value === "object") {
    return `{${Object.entries(value).filter(([, v]) => v !== undefined)
      .map(([k, v]) => `${pythonJSON(k)}: ${pythonJSON(v)}`).join(", ")}}`;
  }
  return JSON.stringify(value);
}

/** A float as Python writes it (7.0, not 7). */
const pythonFloat = (x) => (Number.isInteger(x) ? x.toFixed(1) : String(x));

/** The "parameters" text of an image: the keys `wsd generate` writes, in its order, the seed
 * as an exact JSON integer (up to 2**64-1: read it with Python, or see parseParameters). */
function parametersJSON(s, config) {
  const fields = [
    ["prompt", pythonJSON(s.prompt)], ["negative_prompt", pythonJSON(s.negativePrompt)],
    ["model", pythonJSON(config.model)], ["scheduler", pythonJSON(s.scheduler)],
    ["steps", String(s.steps)], ["guidance_scale", pythonFloat(s.guidanceScale)],
    ["seed", BigInt(s.seed).toString()], ["dtype", pythonJSON(config.dtype)],
    ["target", pythonJSON("webgpu")],
  ];
  if (s.image !== undefined && typeof s.strength === "number") { // made from an input image
    fields.push(["strength", pythonFloat(s.strength)]);
  }
  if (config.loras && config.loras.length) fields.push(["loras", pythonJSON(config.loras)]);
  return `{${fields.map(([k, v]) => `"${k}": ${v}`).join(", ")}}`;
}

/** A "parameters" text (the CLI's or the page's) -> form settings, the seed as a decimal
 * string kept exact (JSON.parse would round a seed above 2**53); null if it is not one. */
export function parseParameters(text) {
  let p;
  try {
    p = JSON.parse(text);
  } catch {
    return null;
  }
  if (!p || typeof p !== "object" || typeof p.prompt !== "string") return null;
  let seed = p.seed;
  if (typeof seed === "number") {
    const digits = text.match(/"seed":\s*(\d+)\s*[,}]/);
    seed = digits ? digits[1] : String(seed);
  }
  const s = { prompt: p.prompt };
  if (typeof p.negative_prompt === "string") s.negativePrompt = p.negative_prompt;
  if (Number.isInteger(p.steps)) s.steps = p.steps;
  if (typeof p.guidance_scale === "number") s.guidanceScale = p.guidance_scale;
  if (typeof p.scheduler === "string") s.scheduler = p.scheduler;
  if (seed !== undefined && /^\d+$/.test(String(seed))) s.seed = String(seed);
  if (typeof p.strength === "number") s.strength = p.strength;
  return { settings: s, model: p.model, dtype: p.dtype, target: p.target };
}

// ------------------------------------------------------------------- the input image

let initImage = null; // {blob, url} of the image generation starts from, if one is chosen
let offered = null; // settings read from the chosen image's PNG, offered for reuse

function setStrength(value) {
  $("strength").value = value;
  $("strength-value").textContent = Number($("strength").value).toFixed(2);
}

async function setInitImage(blob, { offer = true } = {}) {
  if (!blob || !/^image\//.test(blob.type || "")) {
    showError(new Error(`not an image: ${blob && blob.name ? blob.name : "the dropped item"}` +
                        ` (${blob && blob.type ? blob.type : "unknown type"})`));
    return;
  }
  removeInitImage();
  initImage = { blob, url: URL.createObjectURL(blob) };
  $("init-thumb").src = initImage.url;
  $("init-thumb").alt = `input image${blob.name ? `: ${blob.name}` : ""}`;
  $("init-chosen").hidden = false;
  $("init-none").hidden = true;
  $("strength").disabled = false;
  if (!offer) return;
  // a PNG that carries settings (wsd generate's or this page's): offer to reuse them
  try {
    const text = readText(new Uint8Array(await blob.arrayBuffer()));
    const found = text.parameters ? parseParameters(text.parameters) : null;
    if (found && initImage && initImage.blob === blob) {
      offered = found.settings;
      const s = found.settings;
      $("reuse-text").textContent = `This image carries its settings: "${s.prompt}", ` +
        `seed ${s.seed}, ${s.steps} steps, ${s.scheduler}` +
        (found.model ? ` (model ${found.model})` : "") + ".";
      $("reuse").hidden = false;
    }
  } catch { /* not a PNG: nothing to offer */ }
}

function removeInitImage() {
  if (initImage) URL.revokeObjectURL(initImage.url);
  initImage = null;
  offered = null;
  $("init-thumb").removeAttribute("src");
  $("init-chosen").hidden = true;
  $("init-none").hidden = false;
  $("reuse").hidden = true;
  $("strength").disabled = true;
}

/** The first image among dropped or pasted items/files. */
function imageFile(list) {
  for (const item of list || []) {
    const file = item instanceof Blob ? item : item.kind === "file" ? item.getAsFile() : null;
    if (file && /^image\//.test(file.type)) return file;
  }
  return null;
}

function wireImageInput() {
  $("init-file").addEventListener("change", () => {
    const file = $("init-file").files[0];
    if (file) setInitImage(file);
    $("init-file").value = ""; // the same file can be chosen again
  });
  $("init-remove").addEventListener("click", () => {
    removeInitImage();
    $("init-file").focus();
  });
  $("strength").addEventListener("input", () => setStrength($("strength").value));
  $("reuse-apply").addEventListener("click", () => {
    if (offered) showSettings({ ...formSettings(), ...offered });
    $("reuse").hidden = true;
  });
  $("reuse-dismiss").addEventListener("click", () => { $("reuse").hidden = true; });
  const zone = $("dropzone");
  const hasFiles = (event) => event.dataTransfer && [...event.dataTransfer.types].includes("Files");
  document.addEventListener("dragover", (event) => {
    if (!hasFiles(event)) return;
    event.preventDefault(); // the page takes the drop (instead of the browser opening it)
    event.dataTransfer.dropEffect = "copy";
    zone.classList.add("dragging");
  });
  document.addEventListener("dragleave", (event) => {
    if (!event.relatedTarget) zone.classList.remove("dragging");
  });
  document.addEventListener("drop", (event) => {
    zone.classList.remove("dragging");
    if (!event.dataTransfer) return;
    event.preventDefault();
    const files = [...event.dataTransfer.files];
    const file = imageFile(files);
    if (file) setInitImage(file);
    else if (files.length) setInitImage(files[0]); // says it is not an image
  });
  document.addEventListener("paste", (event) => {
    const file = imageFile(event.clipboardData && [...event.clipboardData.items]);
    if (!file) return; // text pastes into the fields as usual
    event.preventDefault();
    setInitImage(file);
  });
}

// ------------------------------------------------------------------- history

let history = new History(); // empty until the stored one has been read (historyOpened)
let historyOpened = null;
let currentBundle = null; // {model, configHash} of the loaded bundle
let selected = null; // the history entry shown, if any

function entryLabel(entry) {
  const s = entry.settings;
  return `seed ${s.seed}, ${s.steps} steps, ${s.scheduler}: ${s.prompt || "(no prompt)"}`;
}

function otherBundle(entry) {
  return currentBundle && entry.configHash !== currentBundle.configHash;
}

function renderHistory() {
  const items = history.entries.map((entry) => {
    const li = document.createElement("li");
    const button = document.createElement("button");
    button.type = "button";
    button.className = "thumb";
    const other = otherBundle(entry);
    button.title = entryLabel(entry) + (other ? ` (made with another bundle: ${entry.model},` +
      ` config ${entry.configHash})` : "");
    button.setAttribute("aria-label", `show ${button.title}`);
    if (entry === selected) button.setAttribute("aria-current", "true");
    const img = document.createElement("img");
    img.src = entryURL(entry);
    img.alt = "";
    button.append(img);
    if (other) {
      const tag = document.createElement("span");
      tag.className = "other";
      tag.textContent = `other model: ${entry.model}`;
      button.append(tag);
    }
    button.addEventListener("click", () => selectEntry(entry));
    li.append(button);
    return li;
  });
  $("history").replaceChildren(...items);
  $("history-empty").hidden = items.length > 0;
  $("clear-history").disabled = items.length === 0;
  $("history-count").textContent = items.length ? `(${items.length})` : "";
}

/** Show a history entry and put its settings (and input image, if any) back in the form. */
function selectEntry(entry) {
  selected = entry;
  showImage(entryURL(entry), entry.settings);
  showSettings(entry.settings);
  if (entry.settings.image) setInitImage(entry.settings.image, { offer: false });
  else removeInitImage();
  renderHistory();
  const other = otherBundle(entry);
  setStatus(other ? `An image of another bundle (${entry.model}); its settings are in the form.`
    : "An image from the history; its settings are in the form.", 1);
}

async function addToHistory(record) {
  await historyOpened;
  const problem = await history.add(record);
  selected = history.entries[0];
  renderHistory();
  if (problem && !addToHistory.warned) {
    addToHistory.warned = true; // once per page: the generation itself worked
    showWarning(problem);
  }
}

function wireHistory() {
  historyOpened = History.open().then((stored) => {
    history = stored;
    if (history.problem) showWarning(history.problem);
    renderHistory();
  });
  $("clear-history").addEventListener("click", async () => {
    const n = history.entries.length;
    if (!n || !confirm(`Delete all ${n} images of the history? This cannot be undone.`)) return;
    try {
      await history.clear();
    } catch (err) {
      showError(new Error(`the history could not be cleared: ${err.message}`));
    }
    selected = null;
    renderHistory();
    setStatus("History cleared.");
  });
}

// ------------------------------------------------------------------- the page

async function main() {
  fillForm();
  wireImageInput();
  $("image").addEventListener("load", fitImage);
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
      currentBundle = { model: e.config.model, configHash: e.config.config_hash };
      renderHistory(); // labels the images of other bundles
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
    const s = checkSettings(options); // reject bad settings before queueing
    showSettings(s);
    const user = options.onProgress;
    const config = engine.config;
    let url;
    try {
      url = await engine.generate({ ...options, onProgress: (p) => {
        onProgress(p);
        if (user) user(p);
      } });
    } catch (err) {
      if (shownURL) $("image").src = shownURL; // not a preview of what did not finish
      throw err;
    }
    const parameters = parametersJSON(s, config);
    const png = withText(fromDataURL(url), { parameters });
    const shown = dataURL(png);
    const settings = { prompt: s.prompt, negativePrompt: s.negativePrompt, steps: s.steps,
                       guidanceScale: s.guidanceScale, scheduler: s.scheduler,
                       seed: String(s.seed) };
    if (s.image !== undefined) Object.assign(settings, { image: s.image, strength: s.strength });
    showImage(shown, settings);
    await addToHistory({
      created: Date.now(), png: new Blob([png], { type: "image/png" }), parameters, settings,
      model: config.model, configHash: config.config_hash, dtype: config.dtype,
      width: config.width, height: config.height,
    });
    return shown;
  };

  window.wsd = {
    get ready() { return ready; },
    generate,
    reload: load,
    timeline,
    progress: latest,
    get history() { return history.entries; }, // newest first (history.js's records)
    get historyStore() { return history; }, // history.js's History, for tests
    get config() { return engine && engine.config; },
    get engine() { return engine; }, // internals, for debugging and tests
    get last() { return engine && engine.last; },
  };
  wireHistory();

  $("recover").addEventListener("click", () => {
    $("error").hidden = true;
    load();
  });
  let controller = null; // the running generation's, for the cancel button
  $("cancel").addEventListener("click", () => {
    if (!controller) return;
    controller.abort();
    $("cancel").disabled = true;
    setStatus("Cancelling after the current step ...");
  });
  $("form").addEventListener("submit", async (event) => {
    event.preventDefault();
    $("error").hidden = true;
    $("generate").disabled = true;
    controller = new AbortController();
    $("cancel").disabled = false;
    let failed = false;
    try {
      const settings = { ...formSettings(), signal: controller.signal };
      if (initImage) { // only then: an engine without img2img refuses these keys
        settings.image = initImage.blob;
        settings.strength = Number($("strength").value);
      }
      await window.wsd.generate(settings); // (through window.wsd: what the page does, scripts see)
      for (const w of engine.last.warnings) showError(new Error(`warning: ${w}`));
    } catch (err) {
      if (err && err.name === "AbortError") {
        setStatus("Cancelled: no image was made.", 0);
      } else {
        failed = true;
        showError(err);
      }
    } finally {
      controller = null;
      $("cancel").disabled = true;
      const lost = engine && engine.lost;
      $("generate").disabled = Boolean(lost);
      if (failed && lost) $("recover").hidden = false;
    }
  });
}

main();
