"""Adapters that make Sparge selectable through other libraries' own mechanisms (one module per
library, imported on demand: `import sparge.integrations.diffusers`). See docs/python.md."""
