"""adapters/peft"""
