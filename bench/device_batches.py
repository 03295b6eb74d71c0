"""CIFAR splits packed for machines without TensorFlow, and their batches made on the device.

A pack (.npz) holds a config's train and eval splits as jresnet.data reads them, in the same
order and still encoded (JPEG stays JPEG; sources that only exist decoded become PNG), plus the
config itself with the preset's mean and std filled in: CIFAR-10 as JPEG is ~47 MB. Pillow
decodes it back; the whole split then lives on the device, where each batch is gathered,
augmented ('cifar' preset: zero padding by a eighth of the side, random crop, flip) and
normalised, so a fast accelerator is not fed by the host.
"""

import io

import jax
import jax.numpy as jnp
import numpy as np
from absl import app
from ml_collections import ConfigDict
from PIL import Image

SPLITS = ("train", "eval")


def pack(cfg: ConfigDict, path: str) -> None:
  """The config's train and eval splits, encoded as stored, in jresnet's order; and the recipe."""
  from jresnet.data import presets, sources  # noqa: PLC0415 (TensorFlow: only to pack)

  source = sources.get(cfg.data)
  preset = presets.resolve(cfg.data, source.metadata)
  if preset.name != "cifar" or preset.image_shape != source.metadata.image_shape:
    raise app.UsageError("Only the 'cifar' preset at the images' own size runs on the device "
                         f"here; got {preset.name!r} at {preset.image_shape}.")
  recipe = ConfigDict(cfg.to_dict())
  recipe.data.mean, recipe.data.std = preset.mean, preset.std
  arrays = {"config": recipe.to_json(), "num_classes": source.metadata.num_classes}
  for name, split in zip(SPLITS, (cfg.data.train_split, cfg.data.eval_split)):
    data = source.load(split, False, cfg.data.max_cache_mb)
    if isinstance(data, sources.ArraySplit):  # sources that only exist decoded: lossless PNG
      blobs, labels = [_png(image) for image in data.images], list(data.labels)
    else:
      records = list(data.read(None).as_numpy_iterator())
      blobs, labels = [r["image"] for r in records], [r["label"] for r in records]
    arrays[f"{name}_bytes"] = np.frombuffer(b"".join(blobs), np.uint8)
    arrays[f"{name}_offsets"] = np.cumsum([0] + [len(b) for b in blobs])
    arrays[f"{name}_labels"] = np.asarray(labels, np.int32)
    print(f"{name} = {split}: {len(blobs)} images, {sum(map(len, blobs)) / 2**20:.1f} MiB encoded")
  np.savez(path, **arrays)


def _png(image: np.ndarray) -> bytes:
  out = io.BytesIO()
  Image.fromarray(image.squeeze(-1) if image.shape[-1] == 1 else image).save(out, "PNG")
  return out.getvalue()


def load_split(f, name: str) -> tuple[np.ndarray, np.ndarray]:
  """uint8 (N, H, W, C) images decoded by Pillow, and int32 labels."""
  data, offsets = f[f"{name}_bytes"], f[f"{name}_offsets"]
  images = [np.asarray(Image.open(io.BytesIO(data[a:b].tobytes())))
            for a, b in zip(offsets[:-1], offsets[1:])]
  images = np.stack([x[..., None] if x.ndim == 2 else x for x in images])
  return images, f[f"{name}_labels"]


def augment(images: jax.Array, key: jax.Array, pad: int) -> jax.Array:
  """Zero-pad by `pad`, crop the original size at a random offset, flip half; per image."""
  n, h, w, c = images.shape
  padded = jnp.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
  ky, kx, kf = jax.random.split(key, 3)
  dy = jax.random.randint(ky, (n,), 0, 2 * pad + 1)
  dx = jax.random.randint(kx, (n,), 0, 2 * pad + 1)
  crops = jax.vmap(lambda im, y, x: jax.lax.dynamic_slice(im, (y, x, 0), (h, w, c)))(
      padded, dy, dx)
  flip = jax.random.bernoulli(kf, 0.5, (n,))
  return jnp.where(flip[:, None, None, None], crops[:, :, ::-1], crops)


class Batches:
  """Train and eval batches gathered, augmented and normalised on the devices.

  `runner` gives the shardings (a `parallel.JitMesh`): the splits are replicated, the batches
  split over the 'data' axis as the steps expect.
  """

  def __init__(self, runner, data: dict, cfg: ConfigDict):
    self.train_x, self.train_y = jax.device_put(data["train"], runner.replicated)
    self.eval_x, self.eval_y = jax.device_put(data["eval"], runner.replicated)
    self.n = len(data["train"][1])
    self.batch, self.eval_batch = cfg.batch_size, cfg.eval_batch_size or cfg.batch_size
    self.seed, self._perms = cfg.seed, {}
    mean = jnp.asarray(cfg.data.mean, jnp.float32) * 255
    std = jnp.asarray(cfg.data.std, jnp.float32) * 255
    pad = self.train_x.shape[1] // 8
    key = jax.random.key(cfg.seed)

    def train(x, y, index, step):
      images = augment(x[index], jax.random.fold_in(key, step), pad)
      return {"image": (images - mean) / std, "label": y[index],
              "mask": jnp.ones(index.shape, bool)}

    def evaluation(x, y, index, mask):
      return {"image": (x[index] - mean) / std, "label": y[index], "mask": mask}

    self._train = jax.jit(train, out_shardings=runner.data)
    self._eval = jax.jit(evaluation, out_shardings=runner.data)

  def _perm(self, epoch: int) -> np.ndarray:
    """Epoch `epoch`'s order, seeded by (seed, epoch); only the latest epoch's is kept."""
    if epoch not in self._perms:
      self._perms = {epoch: np.random.default_rng([self.seed, epoch]).permutation(self.n)}
    return self._perms[epoch]

  def index(self, step: int) -> np.ndarray:
    """The examples of batch `step` (from 0): stream positions [step * B, (step + 1) * B), where
    position g is example perm_e[g mod N] of epoch e = g // N."""
    positions = step * self.batch + np.arange(self.batch)
    epochs = positions // self.n
    return np.concatenate([self._perm(int(e))[positions[epochs == e] % self.n]
                           for e in np.unique(epochs)]).astype(np.int32)

  def train(self, step: int) -> dict:
    return self._train(self.train_x, self.train_y, self.index(step), step)

  def evaluation(self):
    n = len(self.eval_y)
    for start in range(0, n, self.eval_batch):
      index = start + np.arange(self.eval_batch)
      yield self._eval(self.eval_x, self.eval_y, np.minimum(index, n - 1).astype(np.int32),
                       index < n)
