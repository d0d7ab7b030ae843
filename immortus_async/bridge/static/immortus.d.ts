// Types of immortus.js / immortus.mjs (the browser client); docs/protocol.md describes the wire.
