"""Examples for process_comms; a package so that workers can import ``examples.processes`` by name."""
