"""prompters/clip_prompts"""
