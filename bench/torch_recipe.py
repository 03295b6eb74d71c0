"""The CIFAR budget recipe trained by PyTorch on the same split: a reference for jresnet's accuracy.

    python -m bench.torch_recipe --config configs/cifar10_resnet20_budget.py \
        --config.data.path=../shared/datasets/cifar10_jpeg [--config.key=value ...] \
        [--out bench/results.jsonl]

The split (train[:45000] / train[45000:]) comes from jresnet's own folder source, so both
frameworks see the same images; the recipe is read from the config: depth, batch, epochs, SGD
with (Nesterov) momentum, weight decay (on conv and linear weights only unless
weight_decay_mask is off), the learning rate of jresnet's own optax schedule at every step,
pad-4 crop and flip, the preset's mean and std, torchvision's initialisers and (with
zero_init_residual) zero last BatchNorm gammas. What differs is only the framework: its
kernels, random numbers and float32 rounding. One line per epoch
(train loss and accuracy, validation accuracy, images/s); the final result is appended to --out.
"""

import json
import math
import time

import torch
import torch.nn.functional as F
from absl import app, flags, logging
from ml_collections import config_flags

from bench import report, torch_reference
from jresnet import data
from jresnet.training import huge_pages, optim

config_flags.DEFINE_config_file("config", "configs/cifar10_resnet20_budget.py",
                                "The jresnet config whose recipe PyTorch follows.",
                                lock_config=True)
flags.DEFINE_integer("seed", 0, "PyTorch's seed (initialisation, order, augmentation).")
flags.DEFINE_integer("threads", torch.get_num_threads(), "torch.set_num_threads.")
flags.DEFINE_string("out", "bench/results.jsonl", "JSON lines file the result is appended to.")
FLAGS = flags.FLAGS


def split_tensors(data_cfg, split: str):
  images, labels = data.decoded_split(data_cfg, split)
  images = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
  return images, torch.from_numpy(labels).long()


def normalise(images: torch.Tensor, mean, std) -> torch.Tensor:
  mean = torch.tensor(mean).view(1, -1, 1, 1) * 255
  std = torch.tensor(std).view(1, -1, 1, 1) * 255
  return ((images.float() - mean) / std).contiguous(memory_format=torch.channels_last)


def augment(images: torch.Tensor, pad: int, gen: torch.Generator) -> torch.Tensor:
  """Zero-pad, random crop back to the original size, random horizontal flip; uint8 NCHW."""
  n, _, h, w = images.shape
  padded = F.pad(images, (pad, pad, pad, pad))
  dy = torch.randint(0, 2 * pad + 1, (n,), generator=gen)
  dx = torch.randint(0, 2 * pad + 1, (n,), generator=gen)
  rows = (dy[:, None] + torch.arange(h))[:, None, :, None]
  cols = (dx[:, None] + torch.arange(w))[:, None, None, :]
  out = padded[torch.arange(n)[:, None, None, None], torch.arange(3)[None, :, None, None],
               rows, cols]
  flip = torch.rand(n, generator=gen) < 0.5
  out[flip] = out[flip].flip(-1)
  return out


def initialise(model: torch.nn.Module, zero_init_residual: bool) -> torch.nn.Module:
  """torchvision's ResNet initialisers, optionally each residual branch's last BatchNorm gamma 0."""
  for m in model.modules():
    if isinstance(m, torch.nn.Conv2d):
      torch.nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
    elif isinstance(m, torch.nn.BatchNorm2d):
      torch.nn.init.ones_(m.weight)
      torch.nn.init.zeros_(m.bias)
  if zero_init_residual:  # after the loop above, which resets every BatchNorm gamma to 1
    for block in model.modules():
      if hasattr(block, "bn2") and hasattr(block, "shortcut"):
        torch.nn.init.zeros_(block.bn2.weight)
  return model


def accuracy(model, images, labels, mean, std, batch: int) -> float:
  model.eval()
  correct = 0
  with torch.no_grad():
    for i in range(0, len(labels), batch):
      logits = model(normalise(images[i:i + batch], mean, std))
      correct += (logits.argmax(-1) == labels[i:i + batch]).sum().item()
  return correct / len(labels)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  logging.set_verbosity(logging.WARNING)  # tfds narrates every split it builds at INFO
  cfg, args = FLAGS.config, FLAGS
  info = data.load_info(cfg.data)
  if (cfg.model.family != "cifar" or cfg.optimizer.name != "sgd" or cfg.num_epochs is None
      or cfg.label_smoothing or cfg.ema_decay or info.image_shape[:2] != (32, 32)
      or info.preset != "cifar"):
    raise app.UsageError("This reference implements the CIFAR ResNet on 32x32 images with the "
                         "'cifar' preset, trained for num_epochs with SGD, without label "
                         "smoothing or EMA.")
  torch.manual_seed(args.seed)
  torch.set_num_threads(args.threads)
  gen = torch.Generator().manual_seed(args.seed)
  train_x, train_y = split_tensors(cfg.data, cfg.data.train_split)
  val_x, val_y = split_tensors(cfg.data, cfg.data.eval_split)

  model = torch_reference.CifarResNet(cfg.model.depth, cfg.data.num_classes)
  name = f"bench.torch_reference CifarResNet({cfg.model.depth})"
  model = initialise(model, cfg.model.zero_init_residual).to(memory_format=torch.channels_last)
  decays = {p: p.ndim > 1 or not cfg.weight_decay_mask for p in model.parameters()}
  o = cfg.optimizer
  opt = torch.optim.SGD([{"params": [p for p, d in decays.items() if d],
                          "weight_decay": o.weight_decay},
                         {"params": [p for p, d in decays.items() if not d], "weight_decay": 0.0}],
                        lr=0.0, momentum=o.momentum, nesterov=o.nesterov)
  batch = cfg.batch_size
  steps_per_epoch = len(train_y) // batch
  epochs = cfg.num_epochs
  total = math.ceil(epochs * len(train_y) / batch)
  lr_at = optim.create_schedule(cfg, total, len(train_y) / batch)  # jresnet's own optax schedule

  step, start, history = 0, time.perf_counter(), []
  while step < total:
    model.train()
    order = torch.randperm(len(train_y), generator=gen)
    t0, losses, hits, seen = time.perf_counter(), 0.0, 0, 0
    for i in range(min(steps_per_epoch, total - step)):
      idx = order[i * batch:(i + 1) * batch]
      x = normalise(augment(train_x[idx], 4, gen), info.mean, info.std)
      y = train_y[idx]
      lr = float(lr_at(step))
      for group in opt.param_groups:
        group["lr"] = lr
      logits = model(x)
      loss = F.cross_entropy(logits, y)
      opt.zero_grad(set_to_none=True)
      loss.backward()
      opt.step()
      step += 1
      losses += loss.item() * len(y)
      hits += (logits.argmax(-1) == y).sum().item()
      seen += len(y)
    val = accuracy(model, val_x, val_y, info.mean, info.std, cfg.eval_batch_size)
    row = {"epoch": len(history) + 1, "step": step, "train_loss": round(losses / seen, 4),
           "train_accuracy": round(hits / seen, 4), "val_accuracy": val,
           "images_per_s": round(seen / (time.perf_counter() - t0), 1)}
    history.append(row)
    print(json.dumps(row), flush=True)

  result = {"bench": "torch_recipe", "config": cfg.to_dict(), "model": name,
            "threads": args.threads, "machine": report.machine(), **report.conditions(),
            "epochs": epochs, "steps": step, "seed": args.seed,
            "train_minutes": round((time.perf_counter() - start) / 60, 2),
            "val_accuracy": history[-1]["val_accuracy"], "curve": history}
  report.append_jsonl(args.out, [result])
  print(f"PyTorch {name}: {result['val_accuracy']:.2%} validation accuracy after {step} steps "
        f"in {result['train_minutes']} min")


if __name__ == "__main__":
  huge_pages.exec_with_huge_pages()  # as train.py runs
  app.run(main)
