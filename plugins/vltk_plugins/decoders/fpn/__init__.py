"""decoders/fpn"""
