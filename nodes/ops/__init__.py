"""Pure torch logic: no ComfyUI imports, so it is tested directly and runs on any device."""
