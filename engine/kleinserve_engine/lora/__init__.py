"""LoRA adapters applied per batch row: one batch can mix requests with different adapters, or none.

`spec` validates the wire form and imports no torch (the protocol layer uses it before the model loads);
`formats` turns every published key layout into one canonical form; `adapter` reads and checks a file against
the loaded model; `store` caches adapters by content hash; `rows` applies them to a batch without merging weights.
"""
