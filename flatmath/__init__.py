"""Pure math on flat tensors: coupling, scoping, local steps, flat buffers (torch only)."""
