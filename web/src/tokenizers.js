// @mlc-ai/web-tokenizers 0.1.6 is a UMD script although its package.json says
// "type": "module": loaded as an ES module it exports nothing and sets
// `globalThis.tokenizers` instead. This module turns that into a named export.
import "@mlc-ai/web-tokenizers";

export const { Tokenizer } = globalThis.tokenizers;

/**
 * CLIP's fixed-length ids, as wsd/runtime/tokenizer.py's __call__ (and diffusers' tokenizer call
 * with padding="max_length", truncation=True) gives them: bos, the text's tokens, eos;
 * too long: bos, the first n - 2 tokens, eos; short: padded with `pad`.
 * `body`: the text's ids without special tokens (web-tokenizers' encode()).
 * Returns {ids: Int32Array(n), dropped: tokens cut off}.
 */
export function clipIds(body, n, { bos, eos, pad }) {
  let ids = [bos, ...body, eos];
  const dropped = Math.max(0, ids.length - n);
  if (dropped) ids = [...ids.slice(0, n - 1), eos];
  const out = new Int32Array(n).fill(pad);
  out.set(ids);
  return { ids: out, dropped };
}
