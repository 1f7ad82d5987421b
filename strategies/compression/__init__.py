"""Server half of update compression: the Compressed wrapper (compressed.py) and the
dynamic sampling schedule (schedule.py). Client half: fedsim/app/compression_mod.py;
codecs: fedsim/compression/."""
