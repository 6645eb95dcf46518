"""backbones/clip_resnet"""
