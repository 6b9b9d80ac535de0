"""The embedding engine: text in, unit-length vectors out, through an on-disk cache.

`embed.encode(texts, EmbedSpec)` is its front door; `backbone` resolves the weights once, `devices`
owns what runs where, `tokens` the text and batching rules, `onnx_encoder` / `torch_encoder` run the
network, `cache` stores vectors. It imports nothing from the rest of `mtl` but the foundation
(errors, paths, atomic, progress).
"""
