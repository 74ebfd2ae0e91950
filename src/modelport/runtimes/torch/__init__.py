"""PyTorch: TorchScript files and torch.export programs."""
