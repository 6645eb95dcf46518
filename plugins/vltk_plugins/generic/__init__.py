"""Paper-agnostic components: open_clip/timm backbones, simple decoders, frozen/full/lora adapters."""
