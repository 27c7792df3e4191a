// Greedy decoding with onnxruntime-node alone, from a `gpt2reg export --format hf` folder (or a
// single-file export plus its sizes): the graph's documented inputs and outputs, nothing else.
//   node ort_generate.mjs FOLDER MAX_NEW_TOKENS '[[15496, 11, 616, 3290], [40, 716]]'
// Prints JSON: the new token ids per prompt. Prompts of different lengths are left-padded together.
import fs from "node:fs";
import path from "node:path";
import * as ort from "onnxruntime-node";

const [folder, maxNew = "20", promptsJson = "[[15496, 11, 616, 3290]]"] = process.argv.slice(2);
const config = JSON.parse(fs.readFileSync(path.join(folder, "config.json"), "utf8"));
const { n_layer: layers, n_head: heads, n_embd: width } = config;
const headSize = width / heads;
if (config.gpt2reg.variant === "fp16") throw new Error("this example feeds float32 caches: export fp32, int8 or int4");
const session = await ort.InferenceSession.create(path.join(folder, config.gpt2reg.onnx));

const prompts = JSON.parse(promptsJson);
const batch = prompts.length;
const longest = Math.max(...prompts.map((p) => p.length));
let mask = prompts.map((p) => [...Array(longest - p.length).fill(0), ...p.map(() => 1)]);   // 0 on left pads
let ids = prompts.map((p) => [...Array(longest - p.length).fill(0), ...p]);
let past = {};
for (let i = 0; i < layers; i++) {
  for (const kv of ["key", "value"]) {
    past[`past_key_values.${i}.${kv}`] = new ort.Tensor("float32", new Float32Array(0), [batch, heads, 0, headSize]);
  }
}
const int64 = (rows) => new ort.Tensor("int64", BigInt64Array.from(rows.flat().map(BigInt)), [rows.length, rows[0].length]);
const generated = prompts.map(() => []);
for (let step = 0; step < Number(maxNew); step++) {
  const pastLength = mask[0].length - ids[0].length;
  // position ids: the mask's running sum - 1, clamped at 0, for the new tokens only
  const positions = mask.map((row) => row.map((_, j) => Math.max(row.slice(0, j + 1).reduce((a, b) => a + b, 0) - 1, 0)).slice(pastLength));
  const feed = { input_ids: int64(ids), attention_mask: int64(mask), position_ids: int64(positions), ...past };
  if (session.inputNames.includes("logits_to_keep")) feed.logits_to_keep = new ort.Tensor("int64", BigInt64Array.from([1n]), []);
  const out = await session.run(feed);
  const [, kept, vocab] = out.logits.dims;
  const next = [];
  for (let b = 0; b < batch; b++) {
    const offset = (b * kept + kept - 1) * vocab;   // the last position's logits
    let best = 0;
    for (let v = 1; v < vocab; v++) if (out.logits.data[offset + v] > out.logits.data[offset + best]) best = v;
    next.push(best);
    generated[b].push(best);
  }
  for (let i = 0; i < layers; i++) {
    for (const kv of ["key", "value"]) past[`past_key_values.${i}.${kv}`] = out[`present.${i}.${kv}`];
  }
  ids = next.map((t) => [t]);
  mask = mask.map((row) => [...row, 1]);
}
console.log(JSON.stringify(generated));
