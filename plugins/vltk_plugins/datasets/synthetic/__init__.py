"""datasets/synthetic"""
