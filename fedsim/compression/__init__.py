"""Update codecs (top-k, STC, DHQ, QSGD) and their bit streams: pure numpy, no other
fedsim import, shared by the client mod (fedsim/app/compression_mod.py) and the server
wrapper (strategies/compression/)."""
