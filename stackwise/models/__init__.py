"""Models: attention variants, Blocks, the Rack, model families and their HF conversion, encoders, heads, generation, Backpack and BDH."""
