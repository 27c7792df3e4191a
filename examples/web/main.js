// The page's logic: transformers.js's text-generation pipeline over a local model folder, streaming
// the new tokens into the page as they come. Query parameters fill the form (?model=NAME&prompt=...&
// max_new_tokens=N&device=wasm); ?autorun starts at once and ?report posts the result to /result
// (the test's server reads it).
import { env, pipeline, TextStreamer } from "/transformers/transformers.js";

env.allowRemoteModels = false;          // no hub, no CDN: models from /models/, WASM from /ort/
env.allowLocalModels = true;
env.localModelPath = "/models/";
env.useBrowserCache = false;
env.backends.onnx.wasm.wasmPaths = "/ort/";

const $ = (id) => document.getElementById(id);
const query = new URLSearchParams(location.search);
if (query.has("model")) $("model").value = query.get("model");
if (query.has("prompt")) $("prompt").value = query.get("prompt");
if (query.has("max_new_tokens")) $("max").value = query.get("max_new_tokens");
const generators = new Map();

async function device() {
  if (query.get("device")) return query.get("device");
  const adapter = navigator.gpu && (await navigator.gpu.requestAdapter().catch(() => null));
  return adapter ? "webgpu" : "wasm";
}

async function run() {
  const name = $("model").value, prompt = $("prompt").value, max_new_tokens = Number($("max").value);
  const where = await device();
  $("status").textContent = `loading ${name} (${where})…`;
  if (!generators.has(name + where)) generators.set(name + where, await pipeline("text-generation", name, { device: where }));
  const generator = generators.get(name + where);
  const output = $("output"), ids = [];
  output.innerHTML = "";
  output.append(Object.assign(document.createElement("span"), { className: "prompt", textContent: prompt }));
  const started = performance.now();
  const streamer = new TextStreamer(generator.tokenizer, {
    skip_prompt: true,
    callback_function: (text) => output.append(text),
    token_callback_function: (tokens) => ids.push(...tokens.map(Number)),
  });
  $("status").textContent = "generating…";
  const [result] = await generator(prompt, { max_new_tokens, min_new_tokens: max_new_tokens, do_sample: false, streamer });
  const seconds = (performance.now() - started) / 1000;
  $("status").textContent = `${ids.length} tokens in ${seconds.toFixed(2)} s on ${where}`;
  return { ids, text: result.generated_text.slice(prompt.length), device: where };
}

async function report(body) {
  await fetch("/result", { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) });
}

$("run").onclick = () => run().catch((error) => { $("status").textContent = String(error); });
$("status").textContent = "ready";
if (query.has("autorun")) {
  run().then((result) => query.has("report") && report(result))
       .catch((error) => { $("status").textContent = String(error); if (query.has("report")) report({ error: String(error) }); });
}
