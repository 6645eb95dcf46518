"""prompters"""
