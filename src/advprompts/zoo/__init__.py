"""The embedded model zoo: tiny CLIP + tiny Stable Diffusion trained in-repo on the procedural world."""
