"""Writes tiny_checkpoint.pt, the torch-format fixture of test_convert (run
once with torch installed; the tests read it without torch)."""

import argparse
import collections

import torch

torch.manual_seed(0)
state_dict = collections.OrderedDict(
    conv=torch.randn(4, 3, 3, 3),
    half=torch.randn(5).half(),
    bf16=torch.randn(3).bfloat16(),
    steps=torch.tensor([7, -2], dtype=torch.int64),
    transposed=torch.arange(12, dtype=torch.float32).reshape(3, 4).t(),
    view=torch.arange(10, dtype=torch.float32)[2:8:2],
    scalar=torch.tensor(1.5),
    param=torch.nn.Parameter(torch.ones(2)),
)
torch.save({"state_dict": state_dict, "epoch": 3,
            "hyper_parameters": argparse.Namespace(lr=0.1)},
           "tests/data/tiny_checkpoint.pt")
for name, value in state_dict.items():
  print(name, value.dtype, value.float().flatten().tolist())
