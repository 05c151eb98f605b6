// Deno defines node's `process` global; the emscripten code inside tvmjs and web-tokenizers
// then takes its node branch (require("fs")). Hide it so they take the browser branch.
// Imported first by measure.js, so it runs before those modules are evaluated.
delete globalThis.process;
if (typeof globalThis.process !== "undefined") globalThis.process = undefined;
