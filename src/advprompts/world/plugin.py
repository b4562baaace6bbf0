"""The embedded world's shipped benchmarks (``waterbirds-synth``, ``wildcam-synth``, ...) as named datasets,
registered with the core's dataset registry as a plugin (imported when a lookup first misses)."""

from advprompts.world.benchmarks import register_shipped

register_shipped()
