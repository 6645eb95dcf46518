"""datasets/urban"""
