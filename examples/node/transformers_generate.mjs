// Greedy text generation from a `gpt2reg export --format hf` folder with transformers.js, local files only.
//   node transformers_generate.mjs FOLDER [MAX_NEW_TOKENS] [PROMPT ...]
// Prints JSON: the text-generation pipeline's text per prompt, and the token ids that
// model.generate gives for all prompts at once (a left-padded batch).
import path from "node:path";
import { AutoModelForCausalLM, AutoTokenizer, env, pipeline } from "@huggingface/transformers";

const [folder, maxNew = "20", ...given] = process.argv.slice(2);
const prompts = given.length ? given : ["Hello, my dog"];
const max_new_tokens = Number(maxNew);
env.allowRemoteModels = false;                       // never the network: the folder only
env.localModelPath = path.dirname(path.resolve(folder));
const id = path.basename(path.resolve(folder));      // the dtype (its file under onnx/) comes from config.json

const generator = await pipeline("text-generation", id);
const texts = [];
for (const prompt of prompts) {
  const [out] = await generator(prompt, { max_new_tokens, min_new_tokens: max_new_tokens, do_sample: false, return_full_text: false });
  texts.push(out.generated_text);
}

const tokenizer = await AutoTokenizer.from_pretrained(id);
const model = await AutoModelForCausalLM.from_pretrained(id);
const inputs = tokenizer(prompts, { padding: true });    // padding_side "left" from tokenizer_config.json
const output = await model.generate({ ...inputs, max_new_tokens, min_new_tokens: max_new_tokens, do_sample: false });
const width = inputs.input_ids.dims[1];
const ids = output.tolist().map((row) => row.slice(width).map(Number));
console.log(JSON.stringify({ texts, ids }));
