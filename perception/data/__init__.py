"""Data: the ShapesRef generator, the native JSONL format, RefCOCO-family loaders, batching."""
