"""The networks: FLUX (math, layers, flux, quant), the VAE, one ViT for SigLIP / DINOv2 /
CLIP-L / CLIP bigG, the Redux projector, image preprocessing and the CLIP tokenizer.
Flax NNX modules whose parameter paths are BFL's / the hub's checkpoint keys."""
