"""Developer tools, off the library's import path: benchmarks, the device check, the quality table."""
