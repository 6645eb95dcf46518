"""adapters/finetune"""
