"""What a run writes and shows: logs, JSON lines and TensorBoard, pictures, parameter files."""
