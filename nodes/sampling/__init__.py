"""What hooks into ComfyUI's sampler: model patches, wrappers, ControlNet subclasses (comfy imports allowed)."""
