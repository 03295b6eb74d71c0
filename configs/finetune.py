"""Fine-tune ImageNet weights on an image folder: a new head, a slower backbone.

    python train.py --config configs/finetune.py --workdir runs/finetune \
        --config.data.path=<folder with train/<class>/*.jpg and val/<class>/*.jpg>
    python train.py --config configs/finetune.py --workdir runs/finetune --mode=eval

The eval split is `test`, or where the folder has none its `validation`/`val`/`valid` split.

`init_from` is a `jresnet.weights` name (downloaded once into ~/.cache/jresnet/weights; offline,
the error names the file and where to put it) or a local `.safetensors` / `.pth` file in the
torchvision/timm layout. The model fields must describe the same architecture as the weights
(here torchvision's ResNet-50). The classifier is re-initialised for the folder's class count;
everything else starts from the weights and learns at `backbone_lr_scale` times the head's
rate. `--config.model.frozen_bn=True` keeps BatchNorm on its ImageNet statistics (small batches),
`--config.frozen_stages='("stem","layer1")'` freezes early stages, and
`--config.data.train_split='train[:90%]' --config.data.eval_split='train[90%:]'` carves a
validation set from a folder that has none.

Not run to convergence here (no ImageNet weights can be downloaded on this machine); the
end-to-end path is tested in CI from converted random weights (tests/test_training.py).
"""

from configs import default


def get_config():
  c = default.get_config()
  c.init_from = "resnet50.tv2_in1k"
  c.data.source = "folder"
  c.data.preprocess = "imagenet"
  c.model.depth = 50
  c.model.family = "imagenet"
  c.batch_size = 32
  c.num_epochs = 10
  c.optimizer.learning_rate = 0.01
  c.optimizer.nesterov = True
  c.optimizer.weight_decay = 1e-4
  c.backbone_lr_scale = 0.1
  c.schedule.name = "cosine"
  c.schedule.warmup_epochs = 1
  c.label_smoothing = 0.1
  c.log_every_steps = 20
  return c
