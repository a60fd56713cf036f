"""The MicroPython/WASI sandbox agent-written code runs in (wasmtime)."""
