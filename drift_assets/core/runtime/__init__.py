"""The library's runtime stage: devices, processes, progress and cost."""
