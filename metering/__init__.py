"""The moving parts: emitter, local stack, CLI (stream processors, sinks and API follow).

Adapters at the edges; the money rules they apply live in `billing/`.
"""
