"""From one depth number to a full architecture, with errors that name the valid choices.

Two families:
  'imagenet': four stages of widths 64-512 after a strided stem; depth from He et al.'s table.
  'cifar':    three stages of widths 16-64 after a 3x3 stem; depth 6n+2 with basic blocks
              (ResNet-20 ... ResNet-1202) or 9n+2 with bottlenecks (ResNet-164, ResNet-1001).
"""

import dataclasses
from collections.abc import Sequence

IMAGENET_DEPTHS = {
    18: ("basic", (2, 2, 2, 2)),
    26: ("bottleneck", (2, 2, 2, 2)),
    34: ("basic", (3, 4, 6, 3)),
    50: ("bottleneck", (3, 4, 6, 3)),
    101: ("bottleneck", (3, 4, 23, 3)),
    152: ("bottleneck", (3, 8, 36, 3)),
    200: ("bottleneck", (3, 24, 36, 3)),
}
FAMILIES = {
    # family: (stage widths, stem width, default stem)
    "imagenet": ((64, 128, 256, 512), 64, "imagenet"),
    "cifar": ((16, 32, 64), 16, "cifar"),
}
VERSIONS = ("v1", "v1.5", "v2")
BLOCK_KINDS = ("basic", "bottleneck")
LAYERS_PER_BLOCK = {"basic": 2, "bottleneck": 3}


@dataclasses.dataclass(frozen=True)
class Architecture:
  block: str
  stage_sizes: tuple[int, ...]
  widths: tuple[int, ...]
  stem: str
  stem_features: int
  shortcut: str
  preact: bool
  stride_in_1x1: bool


def bottleneck_width(features: int, groups: int, width_per_group: int) -> int:
  """The inner width of a bottleneck: `features` scaled by width_per_group / 64, times groups
  (torchvision's `width`; 4x the stage width for Wide ResNet-50-2, grouped for ResNeXt)."""
  return int(features * (width_per_group / 64.0)) * groups


def _choices(values) -> str:
  return ", ".join(str(v) for v in values)


def cifar_stage_sizes(depth: int, block: str) -> tuple[int, ...]:
  """Three stages of n blocks: depth = 6n+2 (basic) or 9n+2 (bottleneck)."""
  per_stage = 3 * LAYERS_PER_BLOCK[block]
  n, rest = divmod(depth - 2, per_stage)
  if n < 1 or rest:
    examples = "20, 32, 44, 56, 110, 1202" if block == "basic" else "29, 56, 110, 164, 1001"
    raise ValueError(f"a CIFAR ResNet with {block} blocks needs depth {per_stage}n+2 "
                     f"(e.g. {examples}); got depth={depth}")
  return (n,) * 3


def resolve(*, depth: int | None, family: str, stage_sizes: Sequence[int] | None,
            block: str | None, version: str, stem: str | None, shortcut: str | None,
            widths: Sequence[int] | None, width_multiplier: float, groups: int,
            width_per_group: int, stem_features: int | None) -> Architecture:
  """Checks a ResNet's hyper-parameters and fills in the defaults that depend on each other."""
  if family not in FAMILIES:
    raise ValueError(f"family must be one of {_choices(FAMILIES)}; got {family!r}")
  if version not in VERSIONS:
    raise ValueError(f"version must be one of {_choices(VERSIONS)}; got {version!r}")
  if block is not None and block not in BLOCK_KINDS:
    raise ValueError(f"block must be one of {_choices(BLOCK_KINDS)}; got {block!r}")
  preact = version == "v2"
  family_widths, family_stem_features, family_stem = FAMILIES[family]
  if stem_features is not None and stem_features < 1:
    raise ValueError(f"stem_features must be a positive channel count; got {stem_features}")
  stem_features = stem_features or family_stem_features

  if (depth is None) == (stage_sizes is None):
    raise ValueError("give exactly one of depth (e.g. ResNet(depth=50)) or stage_sizes "
                     "(e.g. ResNet(stage_sizes=(2, 2, 2, 2), block='basic'))")
  if stage_sizes is not None:
    stage_sizes = tuple(stage_sizes)
    if not stage_sizes or any(not isinstance(n, int) or n < 1 for n in stage_sizes):
      raise ValueError("stage_sizes must be positive block counts, one per stage; "
                       f"got {stage_sizes}")
    block = block or "basic"
  elif family == "imagenet":
    if depth not in IMAGENET_DEPTHS:
      raise ValueError(f"ResNet depth must be one of {_choices(IMAGENET_DEPTHS)}; "
                       f"got depth={depth}. For other depths pass stage_sizes=... and block=...")
    table_block, stage_sizes = IMAGENET_DEPTHS[depth]
    if block is not None and block != table_block:
      raise ValueError(f"ResNet-{depth} uses {table_block} blocks; got block={block!r}")
    block = table_block
  else:
    block = block or ("bottleneck" if preact else "basic")
    stage_sizes = cifar_stage_sizes(depth, block)

  widths = tuple(widths) if widths is not None else family_widths[:len(stage_sizes)]
  if len(widths) != len(stage_sizes):
    raise ValueError(f"{len(stage_sizes)} stages need {len(stage_sizes)} widths; "
                     f"got widths={widths}")
  widths = tuple(int(w * width_multiplier) for w in widths)

  if block == "basic" and (groups != 1 or width_per_group != 64):
    raise ValueError("basic blocks support only groups=1 and width_per_group=64 "
                     "(ResNeXt and Wide ResNet-50/101 use bottleneck blocks)")
  if groups < 1:
    raise ValueError(f"groups must be >= 1; got {groups}")

  stem = stem or family_stem
  if stem not in ("imagenet", "cifar", "deep"):
    raise ValueError(f"stem must be one of imagenet, cifar, deep; got {stem!r}")
  # The CIFAR experiments of He et al. use parameter-free shortcuts; v2 and ImageNet projections.
  shortcut = shortcut or ("A" if family == "cifar" and not preact else "B")
  if shortcut not in ("A", "B", "D"):
    raise ValueError(f"shortcut must be one of A, B, D; got {shortcut!r}")
  return Architecture(block=block, stage_sizes=stage_sizes, widths=widths, stem=stem,
                      stem_features=stem_features, shortcut=shortcut, preact=preact,
                      stride_in_1x1=version == "v1")
