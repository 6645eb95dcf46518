"""datasets/detection"""
