"""Several processes, GPUs or nodes: torchrun and Ray Train launch, DDP and FSDP train."""
