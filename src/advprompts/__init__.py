"""advprompts: controlled training data generation with diffusion models.

Adversarial Prompts (AP), Guided Prompts (GP) and Guided Adversarial Prompts (GAP):
learn prompt embeddings that make a text-to-image diffusion model generate the
training images a given model needs, then generate, fine-tune and measure.
"""

__version__ = "0.1.0"
