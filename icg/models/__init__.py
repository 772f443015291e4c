"""Plain nn.Modules (no Lightning imports): preference model, meta-token MLLM wrapper, fusion, adapter, rewards."""
