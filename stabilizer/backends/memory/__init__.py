"""The in-process backend: the embedded default."""

from stabilizer.backends.memory.backend import MemoryBackend
from stabilizer.backends.memory.hub import MemoryHub

__all__ = ["MemoryBackend", "MemoryHub"]
