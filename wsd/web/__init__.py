"""The web bundle: model.wasm, params/, the config with its requirements (bundle, limits),
the app (app: esbuild of web/) and `wsd serve` (serve)."""
