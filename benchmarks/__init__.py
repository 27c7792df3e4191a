"""`gpt2reg bench`'s rows and peers (Hugging Face transformers, llama.cpp), beside the package as nanoGPT's
bench.py and timm's benchmark scripts are: they measure the product, they are not part of it."""
