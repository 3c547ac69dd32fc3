"""Goodfellow et al. 2014 in plain PyTorch: the yardstick benchmarks/gpu_throughput.py measures the
harness's Keras model against. Never imported by harness/; not part of the product.

    python benchmarks/reference/goodfellow2014_torch.py [--batches 32,128] [--steps 5] [--warmup 2]
                                                        [--precision bf16] [--compile]

The same layers, sizes and parameter count as ``harness.models.architectures.goodfellow2014`` at its defaults (54x54
crops of 64x64 images, subtractive normalisation, dropout 0.5 and 0.2 after convs, 57 logits); the
count is checked against the one that variant's docstring states, read from harness/models/architectures.py's
source (no Keras import). A training step does the harness's work: uint8 images (B, 64, 64, 3) ->
a random 54x54 crop per example -> [0, 1] -> per-image standardisation -> network -> the sequence
loss (length, and digits up to the length) -> backward -> Adam. ``--precision bf16`` runs the forward
pass under torch.autocast (bfloat16); ``--compile`` wraps the forward pass and loss in torch.compile.
Layouts differ where results do not: channels first (channels_last memory on a GPU), and the
locally connected layer's patch order. Each step returns its loss to the host, so timing is
synchronous, as the harness's train_on_batch is.
"""

from __future__ import annotations

import argparse
import ast
import re
import resource
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

MODELS_SOURCE = Path(__file__).resolve().parents[2] / "harness" / "models.py"
IMAGE_SIZE, CROP_SIZE = 64, 54
LENGTH_CLASSES, MAX_DIGITS = 7, 5
CONV_UNITS = (48, 64, 128, 160, 192, 192, 192, 192)


def stated_parameters(name: str = "goodfellow2014") -> int:
    """The "Parameters: N" line of the harness variant's docstring, parsed from its source file."""
    tree = ast.parse(MODELS_SOURCE.read_text())
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and node.name == name:
            match = re.search(r"Parameters:\s*([\d,]+)", ast.get_docstring(node) or "")
            if match:
                return int(match.group(1).replace(",", ""))
    raise ValueError(f"{MODELS_SOURCE}: no '{name}' with a 'Parameters: N' docstring line")


class Maxout(nn.Module):
    """Max over groups of ``pieces`` consecutive channels (channel u * pieces + p belongs to unit u)."""

    def __init__(self, pieces: int):
        super().__init__()
        self.pieces = pieces

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        return x.view(b, c // self.pieces, self.pieces, h, w).amax(dim=2)


def max_pool_same(x: torch.Tensor, stride: int) -> torch.Tensor:
    """2x2 max pooling with Keras' 'same' padding (any padding at the bottom and right)."""
    if stride == 2:
        return F.max_pool2d(x, 2, 2, ceil_mode=True)
    return F.max_pool2d(F.pad(x, (0, 1, 0, 1), value=float("-inf")), 2, 1)


def subtractive_norm(x: torch.Tensor, size: int = 3) -> torch.Tensor:
    """Subtract each channel's local mean over the in-image positions of a size x size window."""
    return x - F.avg_pool2d(x, size, 1, size // 2, count_include_pad=False)


class LocallyConnected2d(nn.Module):
    """Unshared k x k weights and bias at every location, stride 1, zero padding k // 2."""

    def __init__(self, channels: int, filters: int, kernel: int, height: int, width: int):
        super().__init__()
        self.kernel, self.filters, self.height, self.width = kernel, filters, height, width
        fan = kernel * kernel * (channels + filters)
        limit = (6.0 / fan) ** 0.5
        self.weight = nn.Parameter(torch.empty(height * width, kernel * kernel * channels, filters).uniform_(-limit, limit))
        self.bias = nn.Parameter(torch.zeros(height * width, filters))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        patches = F.unfold(x, self.kernel, padding=self.kernel // 2)  # (B, C*k*k, H*W)
        out = torch.einsum("bkl,lkf->blf", patches, self.weight) + self.bias
        return out.permute(0, 2, 1).reshape(x.shape[0], self.filters, self.height, self.width)


class Goodfellow2014(nn.Module):
    """Eight 5x5 convs (maxout first), pooling strides 2, 1, 2, ..., subtractive normalisation and
    dropout after each; a locally connected layer; two fully connected 3072; the 57 logits."""

    def __init__(self, dropout: float = 0.5, conv_dropout: float = 0.2):
        super().__init__()
        convs, channels = [], 3
        for i, units in enumerate(CONV_UNITS):
            convs.append(nn.Conv2d(channels, units * 3 if i == 0 else units, 5, padding=2))
            channels = units
        self.convs = nn.ModuleList(convs)
        self.maxout = Maxout(3)
        self.conv_dropout = nn.Dropout(conv_dropout)
        size = CROP_SIZE
        for i in range(len(CONV_UNITS)):
            size = -(-size // 2) if i % 2 == 0 else size
        self.local = LocallyConnected2d(channels, 192, 3, size, size)
        self.fc1 = nn.Linear(192 * size * size, 3072)
        self.fc2 = nn.Linear(3072, 3072)
        self.heads = nn.Linear(3072, LENGTH_CLASSES + MAX_DIGITS * 10)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, conv in enumerate(self.convs):
            x = self.maxout(conv(x)) if i == 0 else F.relu(conv(x))
            x = self.conv_dropout(subtractive_norm(max_pool_same(x, 2 if i % 2 == 0 else 1)))
        x = self.dropout(F.relu(self.local(x)))
        x = self.dropout(F.relu(self.fc1(x.flatten(1))))
        x = self.dropout(F.relu(self.fc2(x)))
        return self.heads(x)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def build(device: str | torch.device) -> Goodfellow2014:
    """The network on ``device``; fails unless its parameter count is the harness variant's."""
    model = Goodfellow2014()
    count, stated = count_parameters(model), stated_parameters()
    if count != stated:
        raise AssertionError(f"reference goodfellow2014 has {count:,} parameters; the harness states {stated:,}")
    model = model.to(device)
    if torch.device(device).type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    return model


def preprocess(images: torch.Tensor) -> torch.Tensor:
    """uint8 (B, 64, 64, 3) -> a random 54x54 crop per example, in [0, 1], standardised per image,
    (B, 3, 54, 54)."""
    batch = images.shape[0]
    slack = images.shape[1] - CROP_SIZE
    offsets = torch.randint(0, slack + 1, (batch, 2), device=images.device)
    span = torch.arange(CROP_SIZE, device=images.device)
    rows = (offsets[:, :1] + span)[:, :, None]
    cols = (offsets[:, 1:] + span)[:, None, :]
    crops = images[torch.arange(batch, device=images.device)[:, None, None], rows, cols]  # (B, 54, 54, 3)
    x = crops.permute(0, 3, 1, 2).float() / 255.0
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    std = x.std(dim=(1, 2, 3), keepdim=True, correction=0)
    return ((x - mean) / std.clamp_min(1e-3)).contiguous(memory_format=torch.channels_last)


def sequence_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean of -log P(L) - sum_{i<L} log P(X_i); targets (B, 6): length class, five digits (10 = none)."""
    logits = logits.float()
    length_lp = F.log_softmax(logits[:, :LENGTH_CLASSES], dim=-1)
    digit_lp = F.log_softmax(logits[:, LENGTH_CLASSES:].reshape(-1, MAX_DIGITS, 10), dim=-1)
    length = targets[:, 0].long()
    digits = targets[:, 1:].long().clamp(max=9)
    nll_length = -length_lp.gather(1, length[:, None])[:, 0]
    nll_digits = -digit_lp.gather(2, digits[:, :, None])[:, :, 0]
    present = (torch.arange(MAX_DIGITS, device=logits.device)[None, :] < length.clamp(max=MAX_DIGITS)[:, None])
    return (nll_length + (nll_digits * present).sum(dim=1)).mean()


def random_batch(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Random uint8 images and valid targets: lengths 1-4, digits 0-9 up to the length, 10 beyond."""
    images = rng.integers(0, 256, (size, IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
    length = rng.integers(1, 5, size)
    digits = np.where(np.arange(MAX_DIGITS)[None, :] < length[:, None], rng.integers(0, 10, (size, MAX_DIGITS)), 10)
    return images, np.concatenate([length[:, None], digits], axis=1).astype(np.int32)


def peak_memory(device: torch.device) -> tuple[int, str]:
    """(bytes, what): the CUDA allocator's peak since the last reset ("device"), or the process's max
    RSS ("RSS")."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device), "device"
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "RSS"


def measure(batch_sizes: list[int], *, steps: int, warmup: int, precision: str = "bf16",
            compile: bool = True, device: str | None = None) -> list[dict]:
    """Training images/s at each batch size (ascending), after ``warmup`` untimed steps (the first
    compiles). ``precision``: "bf16" (torch.autocast) or "fp32"."""
    if precision not in ("fp32", "bf16"):
        raise ValueError(f"precision must be fp32 or bf16, not {precision!r}")
    where = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    torch.manual_seed(0)
    model = build(where).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)

    def forward_loss(images, targets):
        with torch.autocast(where.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
            return sequence_loss(model(preprocess(images)), targets)

    step_loss = torch.compile(forward_loss) if compile else forward_loss

    def step(images, targets) -> float:
        optimizer.zero_grad(set_to_none=True)
        loss = step_loss(images, targets)
        loss.backward()
        optimizer.step()
        return loss.item()

    rng = np.random.default_rng(0)
    rows = []
    for size in sorted(batch_sizes):
        images, targets = (torch.from_numpy(a).to(where) for a in random_batch(rng, size))
        if where.type == "cuda":
            torch.cuda.reset_peak_memory_stats(where)
        for _ in range(warmup):
            step(images, targets)
        start = time.perf_counter()
        for _ in range(steps):
            step(images, targets)
        seconds = (time.perf_counter() - start) / steps
        memory, kind = peak_memory(where)
        rows.append({"batch": size, "images_per_sec": size / seconds, "step_seconds": seconds,
                     "peak_memory_bytes": memory, "memory_kind": kind, "device": str(where),
                     "parameters": count_parameters(model)})
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=lambda t: [int(v) for v in t.split(",")], default=[32])
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="bf16")
    parser.add_argument("--compile", action="store_true", help="torch.compile the forward pass and loss")
    args = parser.parse_args(argv)
    print(f"torch {torch.__version__}; parameters {count_parameters(Goodfellow2014()):,} "
          f"(harness states {stated_parameters():,})")
    for row in measure(args.batches, steps=args.steps, warmup=args.warmup, precision=args.precision,
                       compile=args.compile):
        print(f"  batch {row['batch']}: {row['images_per_sec']:,.1f} images/s, {1000 * row['step_seconds']:.1f} ms/step "
              f"on {row['device']}, peak memory ({row['memory_kind']}) {row['peak_memory_bytes'] / 2**20:,.0f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
