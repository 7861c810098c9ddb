"""What runs inside one trial: data, augmentation presets, losses, timm models, the loop,
and the Ray Tune function trainable. Everything but ``trainable`` works without Ray."""
