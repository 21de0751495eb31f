"""torch.hub entry points for backbones exported by mocoxr (nothing is downloaded).

    model = torch.hub.load("path/to/mocoxr", "moco_resnet18", source="local",
                           weights="runs/quick/checkpoints/moco_resnet18_<key>/backbone.pt")
    emb = model(model.preprocess(images))  # images: gray uint8 (B, H, W) or float in [0, 1]
    # emb: (B, 512) embeddings for ResNet18 (2048 ResNet50, 1024 DenseNet121)

Same as ``mocoxr.load_backbone(weights)``: a torchvision model in eval mode, its classifier
replaced by Identity (embeddings), with its model card (``model.card``, ``embedding_dim``) and
the card's preprocessing (``model.preprocess``). ``head="classifier"`` returns the plain
torchvision classifier for fine-tuning (its 1000-class layer is a placeholder to replace).
"""

dependencies = ["torch", "torchvision", "numpy"]


def _load(name: str, weights, **options):
    if weights is None:
        raise ValueError(f"{name}: pass weights=<path to an exported backbone.pt>; mocoxr "
                         "publishes no weights to download")
    from mocoxr.weights import load_backbone

    return load_backbone(weights, expect=name.removeprefix("moco_"), **options)


def moco_resnet18(weights=None, **options):
    """A MoCo-pretrained ResNet18 exported by mocoxr (``weights``: its backbone.pt; ``options``: as
    ``mocoxr.load_backbone``, e.g. ``device``)."""
    return _load("moco_resnet18", weights, **options)


def moco_resnet50(weights=None, **options):
    """A MoCo-pretrained ResNet50 exported by mocoxr (``weights``: its backbone.pt; ``options``: as
    ``mocoxr.load_backbone``, e.g. ``device``)."""
    return _load("moco_resnet50", weights, **options)


def moco_densenet121(weights=None, **options):
    """A MoCo-pretrained DenseNet121 exported by mocoxr (``weights``: its backbone.pt; ``options``: as
    ``mocoxr.load_backbone``, e.g. ``device``)."""
    return _load("moco_densenet121", weights, **options)
