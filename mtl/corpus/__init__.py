"""Corpus scale: `mtl predict --out` / `mtl embed` streamed in chunks to resumable shards (`stream`), labelled in this
process or by actors on a Ray cluster (`ray_engine`)."""
